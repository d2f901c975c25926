#!/usr/bin/env python3
"""hack/link-order/resident-functions.py — the functions of BINARY whose code is in the page cache.

Usage: resident-functions.py BINARY FILE_IN_CACHE [--mapped-by PID] > NAMES

FILE_IN_CACHE is a copy of BINARY that processes have run from, on a filesystem without readahead, after its
pages were dropped from the cache: the pages in the cache (mincore) are then the pages those processes
executed or read, and nothing around them. Prints the (mangled) names of the functions of BINARY's executable
segments that lie on those pages, in address order, one per line: the input of hack/link-order.sh.

With --mapped-by PID, only the pages of FILE_IN_CACHE that process PID has mapped (/proc/PID/pagemap): the
pages it executed, and those around them that another process had brought into the cache before (the kernel
maps up to 16 cached pages around a faulting one), which an order that keeps each process's functions
together makes few.
"""
import bisect
import ctypes
import mmap
import os
import subprocess
import sys


def resident_pages(path):
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vector = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
        sys.exit(f"mincore {path}: errno {ctypes.get_errno()}")
    return [page for page in range(pages) if vector[page] & 1]


def mapped_pages(pid, path):
    """Page indexes of the file at `path` that process `pid` has present in its page tables."""
    target = os.stat(path)
    pages = set()
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in open(f"/proc/{pid}/maps"):
            fields = line.split(maxsplit=5)
            if len(fields) < 6:
                continue
            major, minor = (int(part, 16) for part in fields[3].split(":"))
            if int(fields[4]) != target.st_ino or os.makedev(major, minor) != target.st_dev:
                continue
            start, end = (int(part, 16) for part in fields[0].split("-"))
            first_page = int(fields[2], 16) // mmap.PAGESIZE
            count = (end - start) // mmap.PAGESIZE
            pagemap.seek(start // mmap.PAGESIZE * 8)
            entries = pagemap.read(count * 8)
            for index in range(count):
                entry = int.from_bytes(entries[index * 8 : index * 8 + 8], "little")
                if entry >> 63:
                    pages.add(first_page + index)
    return sorted(pages)


def executable_segments(binary):
    """(file offset, virtual address, size) of each executable LOAD segment."""
    segments = []
    output = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True).stdout
    for line in output.splitlines():
        fields = line.split()
        if fields and fields[0] == "LOAD" and "E" in fields[6:-1]:
            segments.append((int(fields[1], 16), int(fields[2], 16), int(fields[4], 16)))
    return segments


def functions(binary):
    """(address, size, mangled name) of every function with a size, by address."""
    output = subprocess.run(["nm", "--defined-only", "-S", binary], capture_output=True, text=True, check=True).stdout
    found = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "tT" and int(fields[1], 16) > 0:
            found.append((int(fields[0], 16), int(fields[1], 16), fields[3]))
    return sorted(found)


def main():
    binary, in_cache = sys.argv[1:3]
    if sys.argv[3:4] == ["--mapped-by"]:
        pages = mapped_pages(int(sys.argv[4]), in_cache)
    else:
        pages = resident_pages(in_cache)
    segments = executable_segments(binary)
    ranges = []
    for page in pages:
        low, high = page * mmap.PAGESIZE, (page + 1) * mmap.PAGESIZE
        for offset, address, size in segments:
            start, end = max(low, offset), min(high, offset + size)
            if start < end:
                ranges.append((address + start - offset, address + end - offset))
    table = functions(binary)
    starts = [entry[0] for entry in table]
    names = {}
    for start, end in sorted(ranges):
        index = max(0, bisect.bisect_right(starts, start) - 1)
        while index < len(table) and table[index][0] < end:
            address, size, name = table[index]
            if address + size > start:
                names[address] = name
            index += 1
    for address in sorted(names):
        print(names[address])


if __name__ == "__main__":
    main()
