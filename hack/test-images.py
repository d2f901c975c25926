#!/usr/bin/env python3
"""hack/test-images.py — build berth's test images from the host's static busybox and push them to a registry.

Usage:
    hack/test-images.py --registry 127.0.0.1:PORT [--out FILE.json] [--only NAME ...]

What: builds small OCI images offline from Debian's /bin/busybox (package busybox-static) and pushes them over
the OCI distribution HTTP API (POST + PUT blob upload, PUT manifest as application/vnd.oci.image.manifest.v1+json):

    busybox  berth-test/busybox:latest  one layer: /bin/busybox, a symlink per applet, /etc/passwd and
                                        /etc/group (root, nobody 65534), /tmp 1777 and empty system dirs
    web      berth-test/web:latest      busybox layer + /www/index.html; runs `httpd -f -p 80 -h /www`
    big      berth-test/big:latest      busybox layer + four 25 MiB layers of incompressible bytes (~100 MiB),
                                        for pull benchmarks
    pause    berth-test/pause:latest    busybox layer; runs `sleep 2000000000` (a sandbox image for containerd's
                                        CRI plugin in hack/bench/runp.sh)
    kitten   e2e-test-images/kitten:1.8 (only with --only kitten) busybox layer + /data.json, /kitten.jpg and
                                        /etc/os-release: what Kubernetes' image-volume specs read from
                                        registry.k8s.io/e2e-test-images/kitten (whose base is Alpine), for the
                                        node e2e run of hack/conformance.sh, pushed under its original path

    hack/test-images.py --registry 127.0.0.1:PORT --checkpoint-image ARCHIVE REPOSITORY:TAG
pushes a checkpoint image the way buildah makes one from a container checkpoint archive (CRI-O's layout):
one uncompressed layer that is the archive itself, and the manifest annotation
io.kubernetes.cri-o.annotations.checkpoint.name naming the checkpointed container (from its config.dump).
It prints {"ref": "127.0.0.1:PORT/REPOSITORY:TAG", "manifest_digest": ...}.

It prints (and with --out writes) JSON describing each image, e.g.
    {"busybox": {"ref": "127.0.0.1:PORT/berth-test/busybox:latest", "manifest_digest": "sha256:...",
                 "config_digest": "sha256:...", "size": N, ...}, ...}
where size is the number of bytes a pull fetches (manifest + config + compressed layers).

Why: berth's e2e tests and pull benchmarks need images whose bytes and digests are known in advance and that
can be made without internet access. Everything is deterministic: the same busybox binary gives the same
digests on every run and every machine with the same zlib (sorted tar entries, fixed mtime, uid/gid 0, empty
user/group names, PAX format, gzip with mtime 0 and no file name, fixed `created`, JSON with sorted keys and
compact separators, random bytes from SHAKE-256 of a fixed seed). Built layers are cached under
${XDG_CACHE_HOME:-~/.cache}/berth-test-images/<format>-<sha256 of busybox>/ so reruns do not regenerate 100 MiB,
and a blob the registry already has (HEAD 200) is not uploaded again.

Only the Python standard library is used.
"""

import argparse
import gzip
import hashlib
import http.client
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse

# Bump when the content or layout of any image changes, so stale cache entries are never reused.
FORMAT = "v1"
# Fixed timestamp for every tar entry and every `created` field: 2024-01-01T00:00:00Z.
EPOCH = 1704067200
CREATED = "2024-01-01T00:00:00Z"
GZIP_LEVEL = 6
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BIG_LAYERS = 4
BIG_LAYER_BYTES = 25 * 1024 * 1024
WEB_INDEX = b"berth-test-web\n"

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

IMAGES = ("busybox", "web", "big", "pause", "kitten")
# What a run without --only pushes.
DEFAULT_IMAGES = ("busybox", "web", "big", "pause")
# The upstream image the node e2e image-volume specs mount (test/utils/image/manifest.go: Kitten).
KITTEN_REPOSITORY = "e2e-test-images/kitten"
KITTEN_TAG = "1.8"


def log(msg):
    print(f"test-images: {msg}", file=sys.stderr, flush=True)


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_platform():
    """The host's architecture in OCI/Go naming (busybox-static is built for the host)."""
    machine = platform.machine().lower()
    table = {
        "x86_64": ("amd64", None),
        "amd64": ("amd64", None),
        "aarch64": ("arm64", None),
        "arm64": ("arm64", None),
        "armv7l": ("arm", "v7"),
        "armv6l": ("arm", "v6"),
        "i386": ("386", None),
        "i686": ("386", None),
        "ppc64le": ("ppc64le", None),
        "s390x": ("s390x", None),
        "riscv64": ("riscv64", None),
        "mips64": ("mips64le", None),
    }
    if machine not in table:
        sys.exit(f"test-images: unknown host architecture {machine!r}")
    return table[machine]


# ---------------------------------------------------------------------------------------------------------------
# Deterministic layer building


class Layer:
    """A list of tar entries that becomes one gzip-compressed OCI layer."""

    def __init__(self):
        self.entries = {}  # path -> (TarInfo, payload: bytes | callable writing to a file | None)

    def _info(self, path, kind, mode):
        ti = tarfile.TarInfo(path)
        ti.type = kind
        ti.mode = mode
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mtime = EPOCH
        return ti

    def dir(self, path, mode=0o755):
        self.entries[path] = (self._info(path, tarfile.DIRTYPE, mode), None)

    def file(self, path, data, mode=0o644):
        ti = self._info(path, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.entries[path] = (ti, data)

    def symlink(self, path, target):
        ti = self._info(path, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.entries[path] = (ti, None)

    def write_tar(self, out):
        """Writes the uncompressed tar to the binary file `out`, entries sorted by path."""
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                ti, data = self.entries[path]
                tar.addfile(ti, io.BytesIO(data) if data is not None else None)


class HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, inner):
        self.inner = inner
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        if self.inner is not None:
            self.inner.write(data)
        return len(data)

    def tell(self):
        return self.size

    def flush(self):
        if self.inner is not None:
            self.inner.flush()

    def digest(self):
        return "sha256:" + self.hash.hexdigest()


class Cache:
    """Blobs by digest under <dir>/blobs/sha256/, layer descriptors by name under <dir>/layers/."""

    def __init__(self, root):
        self.root = root
        self.blob_dir = os.path.join(root, "blobs", "sha256")
        self.layer_dir = os.path.join(root, "layers")
        os.makedirs(self.blob_dir, exist_ok=True)
        os.makedirs(self.layer_dir, exist_ok=True)

    def blob_path(self, digest):
        algo, hexd = digest.split(":", 1)
        assert algo == "sha256" and len(hexd) == 64, digest
        return os.path.join(self.blob_dir, hexd)

    def layer(self, name, build):
        """The descriptor of the cached layer `name`, building it with build() -> Layer when absent."""
        meta_path = os.path.join(self.layer_dir, name + ".json")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if os.path.getsize(self.blob_path(meta["digest"])) == meta["size"]:
                return meta
        except (OSError, ValueError, KeyError):
            pass
        start = time.monotonic()
        layer = build()
        fd, tmp = tempfile.mkstemp(dir=self.blob_dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as raw:
                compressed = HashingWriter(raw)
                with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0,
                                   compresslevel=GZIP_LEVEL) as gz:
                    uncompressed = HashingWriter(gz)
                    layer.write_tar(uncompressed)
                raw.flush()
                os.fsync(raw.fileno())
            meta = {"digest": compressed.digest(), "size": compressed.size, "diff_id": uncompressed.digest(),
                    "uncompressed_size": uncompressed.size, "media_type": MT_LAYER}
            os.replace(tmp, self.blob_path(meta["digest"]))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        atomic_write(meta_path, canonical_json(meta))
        log(f"built layer {name}: {meta['digest']} ({meta['size']} bytes) in {time.monotonic() - start:.2f}s")
        return meta


def atomic_write(path, data):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def busybox_layer(busybox_bytes, applets):
    layer = Layer()
    for d in ("bin", "dev", "etc", "home", "proc", "sbin", "sys", "usr", "usr/bin", "usr/sbin", "usr/local",
              "usr/local/bin", "usr/local/sbin", "var"):
        layer.dir(d)
    layer.dir("root", 0o700)
    layer.dir("tmp", 0o1777)
    layer.file("bin/busybox", busybox_bytes, 0o755)
    for path in applets:
        layer.symlink(path, "/bin/busybox")
    layer.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                             b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    layer.file("etc/group", b"root:x:0:\nnobody:x:65534:\n")
    return layer


def web_layer():
    layer = Layer()
    layer.dir("www")
    layer.file("www/index.html", WEB_INDEX)
    return layer


def kitten_layer():
    """The files Kubernetes' image-volume specs read: data.json naming kitten.jpg, and an os-release that says
    Alpine Linux, as the upstream image's Alpine base has it (the specs check both)."""
    layer = Layer()
    layer.file("data.json", b'{"image": "kitten.jpg"}\n')
    # Not a picture: the specs only list and read data.json; the name is what matters.
    layer.file("kitten.jpg", b"berth stand-in for the upstream kitten.jpg\n")
    layer.file("etc/os-release", b"# berth hack/test-images.py: stands in for the Alpine base of"
                                 b" registry.k8s.io/e2e-test-images/kitten\n"
                                 b'NAME="Alpine Linux"\nID=alpine\nPRETTY_NAME="Alpine Linux (berth stand-in)"\n')
    return layer


def big_layer(index):
    layer = Layer()
    layer.dir("data")
    # SHAKE-256 is specified by FIPS 202, so these bytes are the same with every Python and OpenSSL.
    data = hashlib.shake_256(f"berth-test-images big layer {index}".encode()).digest(BIG_LAYER_BYTES)
    layer.file(f"data/random-{index}.bin", data)
    return layer


def busybox_applets(busybox):
    out = subprocess.run([busybox, "--list-full"], check=True, capture_output=True, text=True).stdout
    applets = set()
    for line in out.splitlines():
        path = line.strip().lstrip("/")
        if not path or path == "bin/busybox":
            continue
        if ".." in path.split("/"):
            sys.exit(f"test-images: suspicious applet path {line!r}")
        applets.add(path)
    if not applets:
        sys.exit(f"test-images: {busybox} --list-full listed no applets")
    return sorted(applets)


def build_images(busybox, cache_root, names):
    """Returns {name: (repository, config_bytes, manifest_bytes, [layer descriptors])}, building as needed."""
    with open(busybox, "rb") as f:
        busybox_bytes = f.read()
    busybox_sha = hashlib.sha256(busybox_bytes).hexdigest()
    cache = Cache(os.path.join(cache_root, f"{FORMAT}-{busybox_sha}"))
    arch, variant = oci_platform()

    base = cache.layer("busybox", lambda: busybox_layer(busybox_bytes, busybox_applets(busybox)))
    specs = {
        "busybox": {
            "layers": [("busybox", base)],
            "config": {"Env": [PATH_ENV], "Cmd": ["sh"]},
        },
        "web": {
            "layers": [("busybox", base), ("web", None)],
            "config": {"Env": [PATH_ENV], "Cmd": ["httpd", "-f", "-p", "80", "-h", "/www"],
                       "ExposedPorts": {"80/tcp": {}}},
        },
        "big": {
            "layers": [("busybox", base)] + [(f"big-{i}", None) for i in range(1, BIG_LAYERS + 1)],
            "config": {"Env": [PATH_ENV], "Cmd": ["sh"]},
        },
        # A sandbox ("pause") image for containerd's CRI plugin in benchmarks: it only has to stay up.
        "pause": {
            "layers": [("busybox", base)],
            "config": {"Env": [PATH_ENV], "Cmd": ["sleep", "2000000000"]},
        },
        "kitten": {
            "layers": [("busybox", base), ("kitten", None)],
            "config": {"Env": [PATH_ENV], "Cmd": ["sh"]},
            "repository": KITTEN_REPOSITORY,
            "tag": KITTEN_TAG,
        },
    }
    builders = {"web": web_layer, "kitten": kitten_layer}
    for i in range(1, BIG_LAYERS + 1):
        builders[f"big-{i}"] = lambda i=i: big_layer(i)

    images = {}
    for name in names:
        spec = specs[name]
        layers = []
        for lname, meta in spec["layers"]:
            layers.append(meta if meta is not None else cache.layer(lname, builders[lname]))
        config = {
            "architecture": arch,
            "os": "linux",
            "created": CREATED,
            "author": "berth hack/test-images.py",
            "config": spec["config"],
            "rootfs": {"type": "layers", "diff_ids": [m["diff_id"] for m in layers]},
            "history": [{"created": CREATED, "created_by": f"berth hack/test-images.py: layer {lname}"}
                        for lname, _ in spec["layers"]],
        }
        if variant:
            config["variant"] = variant
        config_bytes = canonical_json(config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": sha256_digest(config_bytes), "size": len(config_bytes)},
            "layers": [{"mediaType": MT_LAYER, "digest": m["digest"], "size": m["size"]} for m in layers],
        }
        repository = spec.get("repository", f"berth-test/{name}")
        images[name] = (repository, spec.get("tag"), config_bytes, canonical_json(manifest), layers)
    return cache, images


# ---------------------------------------------------------------------------------------------------------------
# OCI distribution client (plain HTTP, loopback test registries)


class Registry:
    def __init__(self, addr):
        self.addr = addr
        self.conn = None

    def _connect(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.addr, timeout=120)
        return self.conn

    def request(self, method, url, body=None, headers=None):
        """Sends one request; returns (status, headers, body bytes). Reconnects once on a dropped keep-alive."""
        for attempt in (1, 2):
            conn = self._connect()
            try:
                if hasattr(body, "seek"):
                    body.seek(0)
                conn.request(method, url, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.headers, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise

    def _path(self, location):
        """Turns an upload Location (absolute or relative) into a request target on this registry."""
        u = urllib.parse.urlsplit(location)
        if u.netloc and u.netloc != self.addr:
            raise RuntimeError(f"registry redirected upload to another host: {location}")
        return u.path + ("?" + u.query if u.query else "")

    def has_blob(self, repo, digest):
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        return status == 200

    def push_blob(self, repo, digest, size, opener, mount_from=None):
        """Uploads a blob unless present: cross-repository mount when possible, else POST then a single PUT."""
        if self.has_blob(repo, digest):
            return "present"
        url = f"/v2/{repo}/blobs/uploads/"
        if mount_from:
            url += "?" + urllib.parse.urlencode({"mount": digest, "from": mount_from})
        status, headers, body = self.request("POST", url, headers={"Content-Length": "0"})
        if status == 201:
            return "mounted"
        if status != 202:
            raise RuntimeError(f"POST {url}: HTTP {status}: {body[:500]!r}")
        target = self._path(headers["Location"])
        target += ("&" if "?" in target else "?") + urllib.parse.urlencode({"digest": digest})
        with opener() as f:
            status, _, body = self.request("PUT", target, body=f, headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(size)})
        if status != 201:
            raise RuntimeError(f"PUT blob {digest} to {repo}: HTTP {status}: {body[:500]!r}")
        return "uploaded"

    def push_manifest(self, repo, tag, manifest_bytes):
        status, headers, body = self.request("PUT", f"/v2/{repo}/manifests/{tag}", body=manifest_bytes,
                                             headers={"Content-Type": MT_MANIFEST})
        if status != 201:
            raise RuntimeError(f"PUT manifest {repo}:{tag}: HTTP {status}: {body[:500]!r}")
        expected = sha256_digest(manifest_bytes)
        got = headers.get("Docker-Content-Digest")
        if got and got != expected:
            raise RuntimeError(f"registry stored manifest {repo}:{tag} as {got}, expected {expected}")
        return expected


CHECKPOINT_ANNOTATION = "io.kubernetes.cri-o.annotations.checkpoint.name"


def push_checkpoint_image(reg, archive, reference):
    """One uncompressed layer (the archive), a config naming its diff id, the checkpoint annotation."""
    repo, _, tag = reference.rpartition(":")
    if not repo:
        raise RuntimeError(f"--checkpoint-image wants REPOSITORY:TAG, got {reference!r}")
    with open(archive, "rb") as f:
        layer = f.read()
    with tarfile.open(archive) as tar:
        name = json.load(tar.extractfile("config.dump"))["name"]
    layer_digest = sha256_digest(layer)
    config_bytes = canonical_json({
        "architecture": oci_platform()[0], "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "config": {}, "created": "2026-01-01T00:00:00Z",
    })
    manifest_bytes = canonical_json({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": sha256_digest(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": len(layer)}],
        "annotations": {CHECKPOINT_ANNOTATION: name},
    })
    reg.push_blob(repo, layer_digest, len(layer), lambda: io.BytesIO(layer))
    reg.push_blob(repo, sha256_digest(config_bytes), len(config_bytes), lambda: io.BytesIO(config_bytes))
    digest = reg.push_manifest(repo, tag, manifest_bytes)
    return {"ref": f"{reg.addr}/{repo}:{tag}", "manifest_digest": digest}


def main():
    ap = argparse.ArgumentParser(description="Build berth's deterministic test images and push them.")
    ap.add_argument("--registry", required=True, help="registry address, e.g. 127.0.0.1:5000 (plain HTTP)")
    ap.add_argument("--out", help="also write the JSON result to this file")
    ap.add_argument("--only", nargs="+", choices=IMAGES, metavar="NAME",
                    help=f"build and push only these images ({', '.join(IMAGES)})")
    ap.add_argument("--busybox", default="/bin/busybox", help="static busybox binary (default /bin/busybox)")
    default_cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                 "berth-test-images")
    ap.add_argument("--cache-dir", default=default_cache, help=f"layer cache (default {default_cache})")
    ap.add_argument("--tag", default="latest", help="tag to push (default latest)")
    ap.add_argument("--checkpoint-image", nargs=2, metavar=("ARCHIVE", "REPOSITORY:TAG"),
                    help="push a checkpoint image made from a container checkpoint archive, and nothing else")
    args = ap.parse_args()

    if args.checkpoint_image:
        result = push_checkpoint_image(Registry(args.registry), *args.checkpoint_image)
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
        return

    addr = args.registry
    if "/" in addr or addr.startswith("http"):
        ap.error("--registry takes HOST:PORT, without scheme or path")
    names = [n for n in IMAGES if n in (args.only or DEFAULT_IMAGES)]

    start = time.monotonic()
    cache, images = build_images(args.busybox, args.cache_dir, names)
    built = time.monotonic()

    reg = Registry(addr)
    try:
        status, _, body = reg.request("GET", "/v2/")
    except OSError as e:
        sys.exit(f"test-images: cannot reach registry http://{addr}/v2/: {e}")
    if status != 200:
        sys.exit(f"test-images: GET http://{addr}/v2/ answered HTTP {status} (auth is not supported): {body[:200]!r}")

    result = {}
    pushed_to = {}  # blob digest -> a repository that has it, for cross-repository mounts
    uploaded = 0
    for name in names:
        repo, own_tag, config_bytes, manifest_bytes, layers = images[name]
        tag = own_tag or args.tag
        config_digest = sha256_digest(config_bytes)
        for meta in layers:
            digest = meta["digest"]
            path = cache.blob_path(digest)
            how = reg.push_blob(repo, digest, meta["size"], lambda p=path: open(p, "rb"),
                                mount_from=pushed_to.get(digest))
            if how == "uploaded":
                uploaded += meta["size"]
            pushed_to.setdefault(digest, repo)
        reg.push_blob(repo, config_digest, len(config_bytes), lambda b=config_bytes: io.BytesIO(b))
        manifest_digest = reg.push_manifest(repo, tag, manifest_bytes)
        result[name] = {
            "ref": f"{addr}/{repo}:{tag}",
            "repository": repo,
            "tag": tag,
            "manifest_digest": manifest_digest,
            "config_digest": config_digest,
            "size": len(manifest_bytes) + len(config_bytes) + sum(m["size"] for m in layers),
            "unpacked_size": sum(m["uncompressed_size"] for m in layers),
            "layers": [{"digest": m["digest"], "diff_id": m["diff_id"], "size": m["size"]} for m in layers],
        }
    done = time.monotonic()
    log(f"build {built - start:.2f}s, push {done - built:.2f}s ({uploaded} bytes uploaded) to {addr}")

    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    if args.out:
        out_dir = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(out_dir, exist_ok=True)
        atomic_write(os.path.abspath(args.out), text.encode())
    sys.stdout.write(text)


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"test-images: error: {e}")
