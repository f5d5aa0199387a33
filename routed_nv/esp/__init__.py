"""ESP datapath: the SPI plan, static/derived keys, and the XFRM adapter and driver."""
