#!/bin/sh
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Entrypoint of the prhelper pr-helper image, as KubeVirt's virt-handler DaemonSet runs it:
#     /entrypoint.sh -k /var/run/kubevirt/daemons/pr/pr-helper.sock
#
# The pod has its own network namespace, so multipathd's abstract socket is out of reach.
# virt-handler bind-mounts the host's /run/multipathd.socket into the shared socket
# directory; point /run/multipathd.socket (or $MULTIPATH_SOCKET_NAME, when it is a path)
# at it. The link is made even when the socket is not there yet: virt-handler may add the
# bind mount later, and prhelper connects again whenever it needs multipathd. An existing
# socket (a host /run mounted in) is left alone. Then the helper replaces this shell.
pr_dir=/var/run/kubevirt/daemons/pr
link=${MULTIPATH_SOCKET_NAME:-/run/multipathd.socket}
case $link in
/*)
    if [ -L "$link" ] || [ ! -e "$link" ]; then
        mkdir -p "${link%/*}" &&
            ln -sfn "$pr_dir/multipathd.socket" "$link" ||
            echo "entrypoint.sh: cannot link $link to $pr_dir/multipathd.socket; multipathd unreachable" >&2
    fi
    ;;
esac
exec /usr/bin/prhelper "$@"
