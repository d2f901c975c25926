#!/usr/bin/env python3
"""hack/bench/cgroup2-options.py save FILE | restore FILE — keep the host's cgroup2 mount options across a
benchmark that turns on `favordynmods` ([cgroup] favordynmods = true in berth's config): `save` writes the
mount's mountinfo line to FILE, `restore` remounts it with exactly those options again (a cgroup2 remount
resets every option it does not name, which is how favordynmods goes away again)."""
import ctypes
import sys

FLAGS = {"ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048,
         "relatime": 1 << 21, "strictatime": 1 << 24}
MS_REMOUNT = 32


def cgroup2_line():
    lines = [l for l in open("/proc/self/mountinfo") if " - cgroup2 " in l]
    return next((l for l in lines if l.split(" ")[4] == "/sys/fs/cgroup"), lines[0] if lines else None)


command, path = sys.argv[1], sys.argv[2]
if command == "save":
    open(path, "w").write(cgroup2_line() or "")
elif command == "restore":
    line = open(path).read().strip()
    if line:
        before, after = line.split(" - ")
        point, mount_options = before.split(" ")[4], before.split(" ")[5]
        data = ",".join(o for o in after.split(" ")[2].split(",") if o not in ("rw", "ro"))
        flags = MS_REMOUNT
        for option in mount_options.split(","):
            flags |= FLAGS.get(option, 0)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(None, point.encode(), None, flags, data.encode()) != 0:
            sys.exit(f"remount {point} with {data!r}: errno {ctypes.get_errno()}")
