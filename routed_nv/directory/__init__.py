"""The BGP directory: BIRD configuration, its control socket, and what the mirror tables teach.

Flow (docs/directory.md): the routing driver writes local endpoints into per-tenant publish
tables; BIRD (configured by bird_config) carries them to every other host through the route
reflectors; BIRD writes what it learned into per-tenant mirror tables; netlink_watch reports
those routes and learn turns them into the DirectoryView the datapath calculation consumes.
"""
