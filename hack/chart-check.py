#!/usr/bin/env python3
"""hack/chart-check.py — assertions on one `helm template` rendering of charts/berth (run by hack/chart-check.sh).

Usage:
    hack/chart-check.py RENDERED.yaml --name NAME --image REF [--bin-dir DIR] [--config-dir DIR]
                        [--binary-path PATH] [--endpoint unix:///...] [--enter-host-namespaces]

What: reads the manifests helm rendered (PyYAML, Debian's python3-yaml) and checks the DaemonSet against what
the expected values say: hostPID and hostNetwork, dnsPolicy Default; both containers privileged and running REF; hostPath volumes
for /run/berth and /var/lib/berth mounted at the same paths with mountPropagation Bidirectional on the daemon
container, and /sys/fs/cgroup, /etc/cni/net.d, /opt/cni/bin, /var/lib/cni, /var/log/pods and /var/lib/kubelet
mounted at the same paths; liveness and readiness probes running `BINARY --runtime-endpoint ENDPOINT version`
with the socket inside the /run/berth mount; the daemon's command (the image's binary, or nsenter into PID 1's
namespaces and the binary installed in DIR); `serve --config CONFIG_DIR/config.toml` with that directory
mounted from the host; the install init container copying the binary into the host's DIR and config.toml into
CONFIG_DIR (temporary name, then mv -f), and the ConfigMap it reads. Every failed check prints what was expected
and what was found; the exit status is 1 when any failed.

Why: the chart is text templates; a typo in a value path or an indentation renders a DaemonSet that installs
berth where kubelet does not look, or that kubelet accepts but berth cannot work in. Checked before release.
"""

import argparse
import posixpath
import sys

import yaml

# Host paths the daemon works in (values.yaml hostPaths): Bidirectional where berth's own mounts (socket,
# pinned namespaces, overlays) must show on the host.
BIDIRECTIONAL_PATHS = ("/run/berth", "/var/lib/berth")
HOST_PATHS = ("/sys/fs/cgroup", "/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni", "/var/log/pods",
              "/var/lib/kubelet")


class Checks:
    def __init__(self, label):
        self.label = label
        self.passed = 0
        self.failed = 0

    def expect(self, what, expected, found):
        if expected == found:
            self.passed += 1
            return True
        self._fail(what, f"expected {expected!r}\n    found    {found!r}")
        return False

    def require(self, what, condition, found):
        """A check whose expectation is a sentence (what) rather than a value."""
        if condition:
            self.passed += 1
            return True
        self._fail(what, f"found    {found}")
        return False

    def _fail(self, what, detail):
        self.failed += 1
        print(f"chart-check: FAIL [{self.label}] {what}:\n    {detail}", file=sys.stderr)


def by_name(items):
    return {item.get("name"): item for item in items or []}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--name", required=True, help="a label for messages, e.g. defaults")
    parser.add_argument("--image", required=True)
    parser.add_argument("--bin-dir", default="/usr/local/bin")
    parser.add_argument("--config-dir", default="/etc/berth")
    parser.add_argument("--binary-path", default="/usr/local/bin/berth")
    parser.add_argument("--endpoint", default="unix:///run/berth/berth.sock")
    parser.add_argument("--enter-host-namespaces", action="store_true")
    args = parser.parse_args()
    checks = Checks(args.name)

    with open(args.rendered) as f:
        docs = [doc for doc in yaml.safe_load_all(f) if doc]
    kinds = sorted(doc.get("kind", "?") for doc in docs)
    if not checks.expect("rendered kinds", ["ConfigMap", "DaemonSet"], kinds):
        return 1
    daemonset = next(doc for doc in docs if doc["kind"] == "DaemonSet")
    configmap = next(doc for doc in docs if doc["kind"] == "ConfigMap")
    pod = daemonset["spec"]["template"]["spec"]

    checks.expect("spec.hostPID", True, pod.get("hostPID"))
    checks.expect("spec.hostNetwork", True, pod.get("hostNetwork"))
    # The runtime pulls the images of the cluster DNS pods: it resolves names with the node's resolv.conf.
    checks.expect("spec.dnsPolicy", "Default", pod.get("dnsPolicy"))

    containers = by_name(pod.get("containers"))
    init_containers = by_name(pod.get("initContainers"))
    containers_ok = checks.expect("containers", ["berth"], sorted(containers))
    init_containers_ok = checks.expect("initContainers", ["install"], sorted(init_containers))
    if not (containers_ok and init_containers_ok):
        return 1
    daemon = containers["berth"]
    install = init_containers["install"]
    for container in (daemon, install):
        checks.expect(f"{container['name']}: image", args.image, container.get("image"))
        checks.expect(f"{container['name']}: securityContext.privileged", True,
                      (container.get("securityContext") or {}).get("privileged"))

    volumes = by_name(pod.get("volumes"))
    host_volumes = {}  # host path -> volume name
    for name, volume in volumes.items():
        if "hostPath" in volume:
            host_volumes.setdefault(volume["hostPath"]["path"], name)

    def mount_of(container, host_path):
        """The container's volumeMount of the hostPath volume for host_path, or None (after a failed check)."""
        volume = host_volumes.get(host_path)
        if not checks.require(f"a hostPath volume for {host_path}", volume,
                              f"hostPath volumes: {sorted(host_volumes)}"):
            return None
        mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") == volume]
        if not checks.expect(f"{container['name']}: mounts of volume {volume} ({host_path})", 1, len(mounts)):
            return None
        return mounts[0]

    # The daemon's host paths, mounted at the same path: berth hands these paths to the host (kubelet reads
    # the socket and log paths, the mounts it makes there are the host's).
    for host_path in BIDIRECTIONAL_PATHS + HOST_PATHS:
        mount = mount_of(daemon, host_path)
        if mount is None:
            continue
        checks.expect(f"berth: mountPath of {host_path}", host_path, mount.get("mountPath"))
        if host_path in BIDIRECTIONAL_PATHS:
            checks.expect(f"berth: mountPropagation of {host_path}", "Bidirectional", mount.get("mountPropagation"))
        else:
            checks.require(f"berth: mountPropagation of {host_path} is not Bidirectional",
                           mount.get("mountPropagation") != "Bidirectional",
                           f"found {mount.get('mountPropagation')}")

    # Probes: a CRI Version call over the socket, by the image's binary.
    probe_command = [args.binary_path, "--runtime-endpoint", args.endpoint, "version"]
    for probe in ("livenessProbe", "readinessProbe"):
        found = ((daemon.get(probe) or {}).get("exec") or {}).get("command")
        checks.expect(f"berth: {probe}.exec.command", probe_command, found)
    socket = args.endpoint.removeprefix("unix://")
    checks.require(f"the socket {socket} lies in the /run/berth mount",
                   posixpath.commonpath([socket, "/run/berth"]) == "/run/berth", f"endpoint {args.endpoint}")

    # The daemon's command and arguments.
    if args.enter_host_namespaces:
        expected_command = ["nsenter", "--target=1", "--mount", "--uts", "--ipc", "--net", "--pid", "--",
                            posixpath.join(args.bin_dir, "berth")]
    else:
        expected_command = [args.binary_path]
    checks.expect("berth: command", expected_command, daemon.get("command"))
    config_file = posixpath.join(args.config_dir, "config.toml")
    checks.expect("berth: args[:3]", ["serve", "--config", config_file], (daemon.get("args") or [])[:3])
    mount = mount_of(daemon, args.config_dir)
    if mount is not None:
        checks.expect(f"berth: mountPath of {args.config_dir}", args.config_dir, mount.get("mountPath"))

    # The install init container: binary to the host's bin dir, config.toml to its config dir.
    command = install.get("command") or []
    checks.expect("install: command[:2]", ["/bin/sh", "-ec"], command[:2])
    script_lines = [line.strip() for line in (command[2] if len(command) > 2 else "").splitlines()]
    bin_mount = mount_of(install, args.bin_dir)
    if bin_mount is not None:
        target = bin_mount["mountPath"]
        for line in (f"cp {args.binary_path} {target}/.berth.new", f"chmod 0755 {target}/.berth.new",
                     f"mv -f {target}/.berth.new {target}/berth"):
            checks.require(f"install: the script runs `{line}`", line in script_lines, f"script {script_lines}")
    config_mount = mount_of(install, args.config_dir)
    configmap_mounts = [m for m in install.get("volumeMounts") or []
                        if (volumes.get(m.get("name")) or {}).get("configMap", {}).get("name")
                        == configmap["metadata"]["name"]]
    if (config_mount is not None
            and checks.expect("install: mounts of the ConfigMap", 1, len(configmap_mounts))):
        target = config_mount["mountPath"]
        source = posixpath.join(configmap_mounts[0]["mountPath"], "config.toml")
        for line in (f"cp {source} {target}/.config.toml.new",
                     f"mv -f {target}/.config.toml.new {target}/config.toml"):
            checks.require(f"install: the script runs `{line}`", line in script_lines, f"script {script_lines}")
    checks.require("the ConfigMap has config.toml", "config.toml" in (configmap.get("data") or {}),
                   f"keys {sorted(configmap.get('data') or {})}")

    print(f"chart-check: [{args.name}] {checks.passed} checks passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
