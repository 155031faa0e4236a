#!/bin/sh
# A named test-guest process: holds /etc/furnace/known-file open and blocks.
exec 3< /etc/furnace/known-file
read -r never < /run/never
