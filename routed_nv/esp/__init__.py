"""ESP datapath: the XFRM adapter and driver, the IKE driver over VICI, and the reading of the
static keys' secret files (the SPI plan and the key derivation are in routed_nv.model)."""
