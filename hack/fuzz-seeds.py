#!/usr/bin/env python3
"""Seed corpora for berth's fuzz targets (fuzz/fuzz_targets), written to DIR/<target>/.

The seeds are the inputs berth's tests use, made again here so nothing binary is committed: image references,
manifests and configs, layer tars with every entry kind and every escape the unpack tests try (plain, gzip
and zstd), SPDY/3.1 sessions of exec, attach and port-forward, WebSocket channel messages, CNI results,
configuration lists and cache entries, berth's configuration file and its on-disk records. Deterministic:
the same files on every run.

Usage: hack/fuzz-seeds.py DIR
"""

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32


def write(out, target, name, data):
    directory = os.path.join(out, target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def references(out):
    for i, text in enumerate([
        "busybox", "busybox:1.36", "registry.k8s.io/pause:3.10", f"127.0.0.1:5000/app@{DIGEST}",
        f"name:tag@{DIGEST}", "localhost/x/y:z", "docker.io/library/busybox:latest", "index.docker.io/a/b",
        "[::1]:5000/a/b:c", "quay.io/org/repo_name__x-y.z:v1.0-rc_1", "UPPER/case", "a//b", "a:", "@sha256:",
    ]):
        write(out, "image_reference", f"ref-{i}", text)


def manifests(out):
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": DIGEST, "size": 123}
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": OTHER_DIGEST, "size": 456},
        "layers": [layer, dict(layer, mediaType="application/vnd.oci.image.layer.v1.tar+zstd")],
        "annotations": {"org.opencontainers.image.title": "x"},
    }
    index = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": DIGEST, "size": 1,
             "platform": {"architecture": arch, "os": "linux", **({"variant": "v8"} if arch == "arm64" else {})}}
            for arch in ("arm64", "amd64", "s390x")
        ] + [{"mediaType": "application/vnd.in-toto+json", "digest": OTHER_DIGEST, "size": 2,
              "platform": {"architecture": "unknown", "os": "unknown"}}],
    }
    docker_list = dict(index, mediaType="application/vnd.docker.distribution.manifest.list.v2+json")
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], "User": "1000:1000",
                   "WorkingDir": "/w", "ExposedPorts": {"80/tcp": {}}, "Volumes": {"/data": {}},
                   "StopSignal": "SIGTERM", "Labels": {"a": "b"}},
        "rootfs": {"type": "layers", "diff_ids": [DIGEST, OTHER_DIGEST]},
        "history": [{"created_by": "x"}],
    }
    schema1 = {"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}
    for i, (selector, doc) in enumerate([(1, manifest), (2, index), (4, docker_list), (0, config), (0, schema1),
                                         (5, {"manifests": []})]):
        write(out, "image_manifest", f"doc-{i}", bytes([selector]) + json.dumps(doc).encode())


def tar_bytes(members, fmt=tarfile.PAX_FORMAT):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in members:
            info.mtime = 1700000000
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name, kind=tarfile.REGTYPE, data=b"", linkname="", mode=0o644, uid=0, gid=0, pax=None, dev=(0, 0)):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.linkname = linkname
    info.devmajor, info.devminor = dev
    if pax:
        info.pax_headers = pax
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def layer_tars():
    """(name, tar bytes): an ordinary layer, then each thing the unpack tests refuse or handle specially."""
    ordinary = tar_bytes([
        member("etc/", tarfile.DIRTYPE, mode=0o755), member("etc/hostname", data=b"pod\n"),
        member("bin/", tarfile.DIRTYPE, mode=0o755), member("bin/sh", data=b"\x7fELF", mode=0o755),
        member("bin/ls", tarfile.SYMTYPE, linkname="sh"), member("bin/cat", tarfile.LNKTYPE, linkname="bin/sh"),
        member("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)), member("run/fifo", tarfile.FIFOTYPE),
        member("home/user/", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000),
        member("setuid", data=b"x", mode=0o4755),
        member("xattr", data=b"x", pax={"SCHILY.xattr.user.k": "v", "SCHILY.xattr.security.capability": "\x01"}),
    ])
    escapes = [
        ("dotdot", [member("../outside/secret", data=b"overwritten")]),
        ("deep-dotdot", [member("a/../../outside/new", data=b"x")]),
        ("absolute", [member("/run/berth-fuzz/layer-tar/outside/secret", data=b"overwritten")]),
        ("symlink-dir", [member("evil", tarfile.SYMTYPE, linkname="../outside"),
                         member("evil/secret", data=b"overwritten")]),
        ("symlink-abs", [member("evil", tarfile.SYMTYPE, linkname="/run/berth-fuzz/layer-tar/outside"),
                         member("evil/new", data=b"x")]),
        ("symlink-file", [member("f", tarfile.SYMTYPE, linkname="../outside/secret"), member("f", data=b"x")]),
        ("hardlink-out", [member("h", tarfile.LNKTYPE, linkname="../outside/secret")]),
        ("hardlink-via-symlink", [member("s", tarfile.SYMTYPE, linkname="../outside"),
                                  member("h", tarfile.LNKTYPE, linkname="s/secret")]),
        ("hardlink-lower", [member("data/", tarfile.DIRTYPE), member("data/copy", tarfile.LNKTYPE,
                                                                      linkname="data/file")]),
        ("hardlink-lower-symlink", [member("x", tarfile.LNKTYPE, linkname="data/link")]),
        ("hardlink-missing", [member("x", tarfile.LNKTYPE, linkname="no/such/file")]),
        ("whiteouts", [member("etc/", tarfile.DIRTYPE), member("etc/.wh.passwd"), member("data/", tarfile.DIRTYPE),
                       member("data/.wh..wh..opq"), member(".wh...")]),
        ("overlay-xattr", [member("o", data=b"x", pax={"SCHILY.xattr.trusted.overlay.opaque": "y"})]),
        ("dir-over-file", [member("x", data=b"x"), member("x/", tarfile.DIRTYPE), member("x/y", data=b"y")]),
        ("long-name", [member("d/" * 60 + "f", data=b"x")]),
        ("sparse-mode", [member("m", data=b"x", mode=0o7777, uid=2**31, gid=65534)]),
    ]
    yield "ordinary", ordinary
    for name, members in escapes:
        yield name, tar_bytes(members)
    yield "gnu-long", tar_bytes([member("g/" * 80 + "f", data=b"x")], fmt=tarfile.GNU_FORMAT)


def layers(out):
    zstd = shutil.which("zstd")
    for name, data in layer_tars():
        write(out, "layer_tar", name, data)
        write(out, "layer_blob", f"{name}-plain", b"\x10" + data)
        write(out, "layer_blob", f"{name}-gzip", b"\x03" + gzip.compress(data, mtime=0))
        if zstd:
            compressed = subprocess.run([zstd, "-q", "-c", "-3"], input=data, capture_output=True, check=True).stdout
            write(out, "layer_blob", f"{name}-zstd", b"\x07" + compressed)
    if not zstd:
        print("fuzz-seeds: no zstd binary: layer_blob has no zstd seeds (hack/install-deps.sh installs it)",
              file=sys.stderr)
    # Two gzip members in a row (MultiGz) and trailing bytes after the archive.
    ordinary = dict(layer_tars())["ordinary"]
    write(out, "layer_blob", "gzip-members", b"\x00" + gzip.compress(ordinary[:512], mtime=0)
          + gzip.compress(ordinary[512:], mtime=0))
    write(out, "layer_blob", "trailing", b"\x05" + ordinary + b"trailing garbage")


class Spdy:
    """A client's side of a SPDY/3.1 connection: one zlib stream with the SPDY dictionary for headers."""

    def __init__(self):
        with open(os.path.join(ROOT, "crates/streaming/src/spdy/dictionary.bin"), "rb") as f:
            self.zlib = zlib.compressobj(zdict=f.read())

    def headers(self, pairs):
        plain = struct.pack(">I", len(pairs))
        for name, value in pairs:
            plain += struct.pack(">I", len(name)) + name.encode() + struct.pack(">I", len(value)) + value.encode()
        return self.zlib.compress(plain) + self.zlib.flush(zlib.Z_SYNC_FLUSH)

    @staticmethod
    def control(kind, flags, payload):
        return struct.pack(">HHB", 0x8003, kind, flags) + len(payload).to_bytes(3, "big") + payload

    def syn_stream(self, stream_id, pairs, fin=False):
        payload = struct.pack(">IIBB", stream_id, 0, 0, 0) + self.headers(pairs)
        return self.control(1, 1 if fin else 0, payload)

    @staticmethod
    def data(stream_id, data, fin=False):
        return struct.pack(">IB", stream_id, 1 if fin else 0) + len(data).to_bytes(3, "big") + data

    def others(self):
        settings = struct.pack(">I", 1) + bytes([0]) + (7).to_bytes(3, "big") + struct.pack(">I", 65536)
        return (self.control(4, 0, settings)
                + self.control(6, 0, struct.pack(">I", 1))
                + self.control(9, 0, struct.pack(">II", 1, 4096))
                + self.control(3, 0, struct.pack(">II", 3, 5))
                + self.control(8, 0, struct.pack(">I", 1) + self.headers([("a", "b")]))
                + self.control(7, 0, struct.pack(">II", 0, 0)))


def exec_session(resize=True):
    spdy = Spdy()
    wire = spdy.syn_stream(1, [("streamtype", "error")])
    wire += spdy.syn_stream(3, [("streamtype", "stdin")])
    wire += spdy.syn_stream(5, [("streamtype", "stdout")], fin=True)
    wire += spdy.syn_stream(7, [("streamtype", "stderr")], fin=True)
    if resize:
        wire += spdy.syn_stream(9, [("streamtype", "resize")])
        wire += spdy.data(9, b'{"Width":80,"Height":24}')
    wire += spdy.data(3, b"hello\n") + spdy.data(3, b"", fin=True)
    return wire


def port_forward_session():
    spdy = Spdy()
    wire = spdy.syn_stream(1, [("streamtype", "error"), ("port", "80"), ("requestid", "0")])
    wire += spdy.syn_stream(3, [("streamtype", "data"), ("port", "80"), ("requestid", "0")])
    wire += spdy.data(3, b"GET / HTTP/1.0\r\n\r\n") + spdy.data(3, b"", fin=True)
    wire += spdy.syn_stream(5, [("streamtype", "error"), ("port", "1"), ("requestid", "1")])
    wire += spdy.syn_stream(7, [("streamtype", "data"), ("port", "1"), ("requestid", "1")])
    return wire


def ws_frame(payload, opcode=2, fin=True, mask=b"\x00\x00\x00\x00"):
    """A client's WebSocket frame (clients mask; a zero key leaves the payload as it is)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def streaming(out):
    spdy = Spdy()
    write(out, "spdy_frames", "exec", exec_session())
    write(out, "spdy_frames", "port-forward", port_forward_session())
    write(out, "spdy_frames", "control", spdy.others())
    # Selectors (streaming_session.rs `scenario`): bits 0-1 exec/attach/port-forward/raw HTTP, bits 2-4 the
    # protocol version, bit 5 no stderr, bit 6 tty, bit 7 WebSocket instead of SPDY.
    for version in range(5):
        write(out, "streaming_session", f"spdy-exec-v{version}", bytes([version << 2]) + exec_session())
        write(out, "streaming_session", f"spdy-exec-tty-v{version}", bytes([0x40 | version << 2]) + exec_session())
        write(out, "streaming_session", f"spdy-attach-v{version}", bytes([1 | version << 2]) + exec_session(False))
    write(out, "streaming_session", "spdy-port-forward", bytes([2]) + port_forward_session())
    write(out, "streaming_session", "spdy-control", bytes([0]) + Spdy().others())
    for version in range(5):
        base64 = version in (2, 4)
        def message(channel, data):
            if base64:
                import base64 as b64
                return ws_frame(bytes([ord("0") + channel]) + b64.b64encode(data), opcode=1)
            return ws_frame(bytes([channel]) + data)
        wire = message(0, b"hello\n") + message(4, b'{"Width":80,"Height":24}')
        wire += ws_frame(bytes([255, 0])) + ws_frame(b"", opcode=9) + ws_frame(struct.pack(">H", 1000), opcode=8)
        write(out, "streaming_session", f"ws-exec-v{version}", bytes([0x80 | version << 2]) + wire)
        write(out, "streaming_session", f"ws-attach-v{version}", bytes([0x81 | version << 2]) + wire)
    for version in range(4):
        if version == 0:
            wire = b"".join(ws_frame(frame) for frame in [port_forward_session()])
        else:
            wire = ws_frame(b"\x00\x50\x00") + ws_frame(b"\x00GET / HTTP/1.0\r\n\r\n") + ws_frame(b"\x02\x01\x00")
        write(out, "streaming_session", f"ws-port-forward-v{version}", bytes([0x82 | version << 2]) + wire)
    write(out, "streaming_session", "ws-fragments", bytes([0x80])
          + ws_frame(b"\x00hel", fin=False) + ws_frame(b"lo", opcode=0) + ws_frame(b"\x00x" * 70000)[:300])
    write(out, "streaming_session", "raw-spdy", bytes([3]) + b"POST TOKEN HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
          b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n" + exec_session())
    write(out, "streaming_session", "raw-ws", bytes([3]) + b"GET TOKEN?command=sh HTTP/1.1\r\nHost: x\r\n"
          b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
          b"Sec-WebSocket-Key: a2V5\r\nSec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io\r\n\r\n"
          + ws_frame(b"\x00hi"))
    write(out, "streaming_session", "raw-plain", bytes([3]) + b"GET TOKEN HTTP/1.1\r\nHost: x\r\n\r\n"
          b"GET /exec/guess HTTP/1.1\r\nHost: x\r\n\r\n")


def cni(out):
    results = [
        {"cniVersion": "1.0.0", "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                                               {"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": "/run/netns/x"}],
         "ips": [{"interface": 1, "address": "fd00::5/64", "gateway": "fd00::1"},
                 {"interface": 1, "address": "10.244.0.5/24", "gateway": "10.244.0.1"}],
         "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"}],
         "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["a"], "options": ["ndots:5"]}},
        {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.2/8", "interface": 0}],
         "interfaces": [{"name": "eth0"}]},
        {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.2/16", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
         "ip6": {"ip": "fd00::2/64"}, "dns": {}},
    ]
    for i, result in enumerate(results):
        write(out, "cni_input", f"result-{i}", b"\x00" + json.dumps(result).encode())
    conflist = {
        "cniVersion": "1.0.0", "name": "pods",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "{{podCIDR}}"}], [{"subnet": "fd00::/64"}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
            {"type": "tuning", "sysctl": {"net.core.somaxconn": "500"}},
        ],
    }
    write(out, "cni_input", "conflist", b"\x01" + json.dumps(conflist).encode())
    write(out, "cni_input", "conflist-disabled", b"\x01" + json.dumps(dict(conflist, disabled=True)).encode())
    single = {"cniVersion": "0.3.1", "name": "single", "type": "ptp", "ipam": {"type": "host-local"}}
    write(out, "cni_input", "conf", b"\x02" + json.dumps(single).encode())
    cache = {"format": "berth-cni-cache/v1", "containerId": "pod", "network": "pods", "ifname": "eth0",
             "config": conflist, "cniArgs": "IgnoreUnknown=1;K8S_POD_NAME=p",
             "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
             "result": results[0]}
    write(out, "cni_input", "cache", b"\x03" + json.dumps(cache).encode())
    write(out, "cni_input", "cache-in-flight", b"\x03" + json.dumps(dict(cache, result=None)).encode())
    write(out, "cni_input", "cache-empty-chain", b"\x03" + json.dumps(
        dict(cache, config=dict(conflist, plugins=[]))).encode())


def config(out):
    with open(os.path.join(ROOT, "src/config/default.toml"), "rb") as f:
        default = f.read()
    write(out, "config_toml", "default", default)
    write(out, "config_toml", "small", '[daemon]\nsocket_mode = "0640"\nsocket_group = "kube"\n'
          '[cgroup]\ndriver = "systemd"\n[registries."docker.io"]\nmirrors = ["https://m.example"]\n'
          '[registries."r.example".auth]\nusername = "u"\npassword = "p"\n')
    write(out, "config_toml", "bad-line", "[daemon]\n\nsocket_mode = 0777\n")


def records(out):
    write(out, "state_records", "shim", b"\x00" + json.dumps({
        "version": "v1", "pid": 1, "start_time": 1, "socket": "/run/berth/pods/x/sock",
        "pid_namespace_holder": 0}).encode())
    write(out, "state_records", "exit", b"\x01" + json.dumps({
        "exit_code": 137, "finished_at_unix_nanos": 1700000000000000000, "oom_killed": True,
        "message": "OOMKilled"}).encode())
    state = {"ociVersion": "1.2.0", "id": "c", "status": "running", "pid": 1, "pidStartTime": 1,
             "bundle": "/b", "rootfs": "/b/rootfs", "annotations": {"a": "b"}, "created": "2026-01-01T00:00:00Z",
             "cgroupPath": "/berth/c"}
    write(out, "state_records", "state", b"\x02" + json.dumps(state).encode())
    write(out, "state_records", "state-scope", b"\x02" + json.dumps(dict(
        state, cgroupPath="/kubepods.slice/berth-c.scope",
        systemdScope={"unit": "berth-c.scope", "slice": "kubepods.slice"})).encode())
    write(out, "state_records", "torn", b"\x01" + b'{"exit_code": 1, "finished_at_un')


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    out = sys.argv[1]
    for make in (references, manifests, layers, streaming, cni, config, records):
        make(out)


if __name__ == "__main__":
    main()
