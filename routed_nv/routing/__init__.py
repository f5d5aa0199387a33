"""The routing datapath: links, VRFs, addresses, routes and proxy-NDP entries via netlink."""
