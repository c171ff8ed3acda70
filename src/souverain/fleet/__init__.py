"""The fleet: datacenters (with the attributes sovereignty is decided on) and nodes."""
