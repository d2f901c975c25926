#!/usr/bin/env python3
"""hack/image.py — build berth's OCI image without Docker, reproducibly (`make image`).

Usage:
    hack/image.py [--binary target/release/berth] [--out target/image/berth-oci] [--busybox /bin/busybox]
                  [--version VERSION] [--revision COMMIT] [--no-smoke-test]

What: one gzip layer holding
    /usr/local/bin/berth            the binary (--binary)
    the loader and shared libraries it needs, at the paths `ldd` resolves them to (e.g. /lib64/ld-linux-x86-64.so.2,
                                    /lib/x86_64-linux-gnu/libc.so.6, libseccomp.so.2), copied from the host
    /bin/busybox                    Debian's static busybox (package busybox-static), with symlinks /bin/sh, cp, mv,
                                    mkdir, chmod and nsenter: what the chart's install init container runs, and
                                    nsenter for daemon.enterHostNamespaces (charts/berth/templates/daemonset.yaml)
    /tmp                            1777
and a config with Entrypoint ["/usr/local/bin/berth"], Cmd ["serve"], PATH, and the labels
org.opencontainers.image.{title,description,version,revision,licenses} (source too, once Cargo.toml names a
repository). The version is [workspace.package] version of Cargo.toml, and the image is tagged with it
(org.opencontainers.image.ref.name in index.json); the revision is the commit the binary reports in
`berth --version` (0.1.0+COMMIT), and the build fails when the binary's version is not Cargo.toml's.

It writes an OCI image layout to --out (oci-layout, index.json, blobs/sha256/...; replaced whole, so no stale
blob stays) and the same layout as a tar archive to OUT.tar (what `skopeo copy oci-archive:OUT.tar:VERSION`
reads), then prints the manifest digest as the last line of stdout.

As root it then unpacks the layer into a temporary directory and, in a chroot of it, runs
`/usr/local/bin/berth --version` (must print what the binary prints on the host) and the install container's
steps (mkdir -p, cp, chmod, mv -f with /bin/sh) and `nsenter --help`; --no-smoke-test leaves that out.

Why: nodes install berth from an image (charts/berth), and there is no Docker engine on the build machines.
The image is reproducible: the same binary, busybox and host libraries give the same digests, bit for bit
(sorted tar entries, mtime SOURCE_DATE_EPOCH or 0, uid/gid 0 with empty names, PAX format, gzip with mtime 0
and no file name, `created` from the same epoch, JSON with sorted keys and compact separators). The digest
depends on the host's busybox, glibc and libseccomp files and on zlib: a Debian point release that updates
one of them changes it. The binary stamps its commit into itself, so a new commit changes the digest anyway.

Only the Python standard library is used.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY_PATH = "usr/local/bin/berth"
BUSYBOX_PATH = "bin/busybox"
# What charts/berth/templates/daemonset.yaml runs from the image besides berth: the install init container's
# script (/bin/sh -ec with mkdir, cp, chmod, mv; echo is a shell builtin) and nsenter for enterHostNamespaces.
APPLETS = ("sh", "cp", "mv", "mkdir", "chmod", "nsenter")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GZIP_LEVEL = 9

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

# ELF e_machine -> OCI architecture.
ELF_MACHINES = {62: "amd64", 183: "arm64", 40: "arm", 3: "386", 21: "ppc64le", 22: "s390x", 243: "riscv64"}


class ImageError(Exception):
    pass


def log(msg):
    print(f"image: {msg}", file=sys.stderr, flush=True)


def shown(path):
    """path relative to the working directory when below it, else absolute: for messages."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def source_date_epoch():
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not value.isdigit():
        raise ImageError(f"SOURCE_DATE_EPOCH must be a number of seconds, found {value!r}")
    return int(value)


def workspace_metadata():
    """Version, license, description and repository from Cargo.toml ([workspace.package], then [package])."""
    with open(os.path.join(REPO_ROOT, "Cargo.toml"), "rb") as f:
        cargo = tomllib.load(f)
    workspace = cargo.get("workspace", {}).get("package", {})
    package = cargo.get("package", {})

    def field(name):
        value = package.get(name)
        if isinstance(value, dict) or value is None:  # `name.workspace = true`
            value = workspace.get(name)
        return value

    version = workspace.get("version")
    if not version:
        raise ImageError("Cargo.toml has no [workspace.package] version")
    return {"version": version, "license": field("license"), "description": field("description"),
            "repository": field("repository")}


def elf_header(path):
    """(architecture, interpreter or None) of an ELF executable; ImageError when it is not one we know."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF":
            raise ImageError(f"{path} is not an ELF file")
        if head[4] != 2 or head[5] != 1:
            raise ImageError(f"{path} is not a 64-bit little-endian ELF file")
        machine = int.from_bytes(head[18:20], "little")
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        interp = None
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            ph = f.read(phentsize)
            if int.from_bytes(ph[0:4], "little") == 3:  # PT_INTERP
                offset = int.from_bytes(ph[8:16], "little")
                size = int.from_bytes(ph[32:40], "little")
                f.seek(offset)
                interp = f.read(size).rstrip(b"\0").decode()
    if machine not in ELF_MACHINES:
        raise ImageError(f"{path}: unknown ELF machine {machine}")
    return ELF_MACHINES[machine], interp


def shared_libraries(binary, interp):
    """Absolute paths of the loader and every library `ldd` resolves for the binary, loader first."""
    result = subprocess.run(["ldd", binary], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if result.returncode != 0:
        raise ImageError(f"ldd {binary} failed: {result.stderr.strip() or result.stdout.strip()}")
    libraries = [interp]
    for line in result.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            name, _, rest = line.partition("=>")
            rest = rest.strip()
            if rest.startswith("not found"):
                raise ImageError(f"ldd {binary}: {name.strip()} not found on this host")
            path = rest.split(" (", 1)[0].strip()
            if not path:  # linux-vdso.so.1 => (0x...) on older glibc: provided by the kernel
                continue
        else:
            path = line.split(" (", 1)[0].strip()
            if not path.startswith("/"):  # linux-vdso.so.1 (0x...)
                continue
        if not os.path.isabs(path):
            raise ImageError(f"ldd {binary}: cannot use {line!r}")
        if path not in libraries:
            libraries.append(path)
    return libraries


def binary_version(binary):
    """(version, commit) from `berth --version` (`berth 0.1.0+1a2b3c4d5e6f`), or None when it says otherwise."""
    try:
        result = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as err:
        raise ImageError(f"cannot run {binary} --version: {err}") from err
    match = re.fullmatch(r"berth (\S+?)(?:\+(\S+))?\n?", result.stdout)
    if result.returncode != 0 or not match:
        return None
    return match.group(1), match.group(2)


class Layer:
    """Tar entries by path; written sorted, with fixed owners and times."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}

    def _info(self, path, kind, mode):
        info = tarfile.TarInfo(path)
        info.type = kind
        info.mode = mode
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = self.mtime
        return info

    def dir(self, path, mode=0o755):
        self.entries[path] = (self._info(path, tarfile.DIRTYPE, mode), None)

    def dirs_for(self, path):
        """Every parent directory of path, 0755, unless already present."""
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self.entries:
                self.dir(parent)

    def file(self, path, data, mode):
        self.dirs_for(path)
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.entries[path] = (info, data)

    def symlink(self, path, target):
        self.dirs_for(path)
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.entries[path] = (info, None)

    def tar_bytes(self):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                info, data = self.entries[path]
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return out.getvalue()


def read_host_file(path):
    """Contents and tar mode (0755 if executable, else 0644) of a host file, symlinks followed."""
    with open(path, "rb") as f:
        data = f.read()
    mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
    return data, mode


def build_layer(binary, busybox, libraries, mtime):
    layer = Layer(mtime)
    layer.dir("tmp", 0o1777)
    with open(binary, "rb") as f:
        layer.file(BINARY_PATH, f.read(), 0o755)
    for library in libraries:
        data, mode = read_host_file(library)
        layer.file(library.lstrip("/"), data, mode)
    with open(busybox, "rb") as f:
        layer.file(BUSYBOX_PATH, f.read(), 0o755)
    for applet in APPLETS:
        layer.symlink(f"bin/{applet}", "busybox")
    return layer


def gzip_bytes(data):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=GZIP_LEVEL) as gz:
        gz.write(data)
    return out.getvalue()


def write_blob(layout, data):
    digest = sha256_digest(data)
    with open(os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1]), "wb") as f:
        f.write(data)
    return digest


def write_archive(layout, archive, mtime):
    """The layout directory as a tar (entries sorted, fixed owners and times), written atomically."""
    names = []
    for top, dirs, files in os.walk(layout):
        rel = os.path.relpath(top, layout)
        for name in dirs + files:
            names.append(os.path.normpath(os.path.join(rel, name)))
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(archive), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(names):
                path = os.path.join(layout, name)
                info = tarfile.TarInfo(name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = mtime
                if os.path.isdir(path):
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                else:
                    info.mode = 0o644
                    info.size = os.path.getsize(path)
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, archive)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def smoke_test(layer_tar, binary_bytes, expected_version_output):
    """Runs the binary and the install container's steps in a chroot of the unpacked layer."""
    root = tempfile.mkdtemp(prefix="berth-image-smoke-")
    try:
        with tarfile.open(fileobj=io.BytesIO(layer_tar)) as tar:
            if hasattr(tarfile, "tar_filter"):
                tar.extractall(root, filter="tar")
            else:
                tar.extractall(root)

        def chroot(*argv):
            result = subprocess.run(["chroot", root, *argv], capture_output=True, text=True, timeout=60,
                                    env={"PATH": PATH_ENV.split("=", 1)[1], "LC_ALL": "C"})
            if result.returncode != 0:
                raise ImageError(f"smoke test: `{' '.join(argv)}` exited {result.returncode} in the image's rootfs:"
                                 f" {(result.stderr or result.stdout).strip()}")
            return result.stdout

        found = chroot(f"/{BINARY_PATH}", "--version")
        if expected_version_output is not None and found != expected_version_output:
            raise ImageError(f"smoke test: berth --version in the image printed {found!r},"
                             f" expected {expected_version_output!r} (as on the host)")
        # The install init container's script, as charts/berth/templates/daemonset.yaml runs it.
        chroot("/bin/sh", "-ec", f"""
            mkdir -p /host/bin
            cp /{BINARY_PATH} /host/bin/.berth.new
            chmod 0755 /host/bin/.berth.new
            mv -f /host/bin/.berth.new /host/bin/berth
            nsenter --help
        """)
        installed = os.path.join(root, "host", "bin", "berth")
        with open(installed, "rb") as f:
            if f.read() != binary_bytes:
                raise ImageError("smoke test: the binary the install steps copied differs from the one packed")
        if os.stat(installed).st_mode & 0o777 != 0o755:
            raise ImageError(f"smoke test: the installed binary has mode {os.stat(installed).st_mode & 0o777:o}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def build(args):
    mtime = source_date_epoch()
    created = datetime.datetime.fromtimestamp(mtime, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = workspace_metadata()
    version = args.version or meta["version"]

    binary = args.binary
    if not os.path.isfile(binary):
        raise ImageError(f"{binary} does not exist (build it with `make release`, or pass BINARY=path)")
    arch, interp = elf_header(binary)
    busybox_arch, busybox_interp = elf_header(args.busybox)
    if busybox_interp is not None:
        raise ImageError(f"{args.busybox} is dynamically linked ({busybox_interp}); install busybox-static")
    if busybox_arch != arch:
        raise ImageError(f"{args.busybox} is {busybox_arch}, {binary} is {arch}")
    listed = subprocess.run([args.busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    missing = [applet for applet in APPLETS if applet not in listed]
    if missing:
        raise ImageError(f"{args.busybox} has no applet {', '.join(missing)}")

    # The binary's own word on its version: an image tagged 0.2.0 must not carry a 0.1.0 binary.
    reported = binary_version(binary)
    version_output = None
    if reported is None:
        if args.revision is None:
            raise ImageError(f"{binary} --version did not print `berth VERSION+COMMIT`; pass --revision (and"
                             f" --version) to pack it anyway")
        revision = args.revision
    else:
        binary_semver, binary_commit = reported
        if binary_semver != version:
            raise ImageError(f"{binary} reports version {binary_semver}, the image would be tagged {version}"
                             f" (Cargo.toml's [workspace.package] version, or --version): rebuild it")
        revision = args.revision or binary_commit
        version_output = f"berth {binary_semver}" + (f"+{binary_commit}" if binary_commit else "") + "\n"

    libraries = shared_libraries(binary, interp) if interp is not None else []
    layer = build_layer(binary, args.busybox, libraries, mtime)
    layer_tar = layer.tar_bytes()
    layer_gz = gzip_bytes(layer_tar)
    log(f"berth {version} (revision {revision or 'none'}) for linux/{arch} from {binary}")
    log(f"layer {sha256_digest(layer_gz)}: {len(layer_gz)} bytes gzip, {len(layer_tar)} bytes tar; "
        f"{'libraries ' + ' '.join(libraries) if libraries else 'static binary, no libraries'}; "
        f"busybox with {' '.join(APPLETS)}")

    if args.smoke_test and os.geteuid() == 0:
        with open(binary, "rb") as f:
            smoke_test(layer_tar, f.read(), version_output)
        log("smoke test passed in a chroot of the layer: berth --version, the install container's"
            " mkdir/cp/chmod/mv with /bin/sh, nsenter")
    elif args.smoke_test:
        log("smoke test skipped: chroot needs root")

    labels = {"org.opencontainers.image.title": "berth", "org.opencontainers.image.version": version}
    if meta["description"]:
        labels["org.opencontainers.image.description"] = meta["description"]
    if meta["license"]:
        labels["org.opencontainers.image.licenses"] = meta["license"]
    if meta["repository"]:
        labels["org.opencontainers.image.source"] = meta["repository"]
    if revision:
        labels["org.opencontainers.image.revision"] = revision
    config = {
        "created": created,
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": [PATH_ENV],
            "Entrypoint": [f"/{BINARY_PATH}"],
            "Cmd": ["serve"],
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer_tar)]},
        "history": [{"created": created,
                     "created_by": "hack/image.py: berth, its loader and libraries, busybox "
                                   + " ".join(APPLETS)}],
    }
    config_bytes = canonical_json(config)

    out = os.path.abspath(args.out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    layout = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.tmp-")
    try:
        os.makedirs(os.path.join(layout, "blobs", "sha256"))
        layer_digest = write_blob(layout, layer_gz)
        config_digest = write_blob(layout, config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": [{"mediaType": MT_LAYER, "digest": layer_digest, "size": len(layer_gz)}],
        }
        manifest_bytes = canonical_json(manifest)
        manifest_digest = write_blob(layout, manifest_bytes)
        index = {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [{"mediaType": MT_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes),
                           "platform": {"architecture": arch, "os": "linux"},
                           "annotations": {"org.opencontainers.image.ref.name": version}}],
        }
        with open(os.path.join(layout, "index.json"), "wb") as f:
            f.write(canonical_json(index))
        with open(os.path.join(layout, "oci-layout"), "wb") as f:
            f.write(canonical_json({"imageLayoutVersion": "1.0.0"}))
        os.chmod(layout, 0o755)
        if os.path.lexists(out):
            shutil.rmtree(out)
        os.rename(layout, out)
    except BaseException:
        shutil.rmtree(layout, ignore_errors=True)
        raise
    archive = out + ".tar"
    write_archive(out, archive, mtime)

    log(f"wrote {shown(out)} (oci:{shown(out)}:{version}) and {shown(archive)}"
        f" ({os.path.getsize(archive)} bytes); manifest digest:")
    print(manifest_digest, flush=True)


def main():
    parser = argparse.ArgumentParser(description="Build berth's OCI image (an OCI layout and its tar archive).")
    parser.add_argument("--binary", default=os.path.join(REPO_ROOT, "target", "release", "berth"))
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "target", "image", "berth-oci"),
                        help="OCI layout directory; the archive is OUT.tar")
    parser.add_argument("--busybox", default="/bin/busybox", help="a static busybox (package busybox-static)")
    parser.add_argument("--version", help="tag and version label (default: Cargo.toml's workspace version)")
    parser.add_argument("--revision", help="revision label (default: the commit `berth --version` reports)")
    parser.add_argument("--no-smoke-test", dest="smoke_test", action="store_false",
                        help="do not run the binary and the install steps in a chroot of the layer")
    args = parser.parse_args()
    try:
        build(args)
    except (ImageError, OSError, subprocess.CalledProcessError) as err:
        sys.exit(f"image: error: {err}")


if __name__ == "__main__":
    main()
