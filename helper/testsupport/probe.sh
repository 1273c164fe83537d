#!/bin/sh
# probe.sh: a "#!" test program (not installed).  Writes its network
# namespace, ids and arguments to $1 (also the marker that it ran).
out=$1
shift
{
	echo "netns=$(readlink /proc/self/ns/net)"
	echo "uid=$(id -u) gid=$(id -g)"
	echo "args=$*"
} >"$out.tmp" && mv "$out.tmp" "$out"
