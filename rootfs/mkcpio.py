#!/usr/bin/env python3
"""Write a gzip'd newc cpio archive (an initramfs) from a directory.

Runs without root: owners are 0:0 and device nodes are named with --node
rather than created on disk.  Timestamps are fixed, so the same inputs give
the same archive.

    mkcpio.py OUT.cpio.gz DIR [--node PATH:MODE:c:MAJOR:MINOR ...]
"""
import argparse
import gzip
import os
import stat
import sys


def header(ino, mode, size, name, nlink=1, rmajor=0, rminor=0):
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor,
              len(name) + 1, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def pad(n):
    return b"\0" * ((4 - n % 4) % 4)


def entry(out, ino, mode, name, data=b"", rdev=(0, 0)):
    head = header(ino, mode, len(data), name, rmajor=rdev[0], rminor=rdev[1])
    raw = head + name.encode() + b"\0"
    out.write(raw + pad(len(raw)) + data + pad(len(data)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("root")
    ap.add_argument("--node", action="append", default=[],
                    help="PATH:MODE:c|b:MAJOR:MINOR, e.g. dev/console:600:c:5:1")
    args = ap.parse_args()

    ino = 1
    with gzip.GzipFile(args.out, "wb", mtime=0) as out:
        for dirpath, dirnames, filenames in os.walk(args.root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, args.root)
            for name in [None] + sorted(filenames) + [
                    d for d in dirnames
                    if os.path.islink(os.path.join(dirpath, d))]:
                if name is None:
                    if rel_dir == ".":
                        continue
                    path, rel = dirpath, rel_dir
                else:
                    path = os.path.join(dirpath, name)
                    rel = os.path.normpath(os.path.join(rel_dir, name))
                st = os.lstat(path)
                perm = stat.S_IMODE(st.st_mode)
                if stat.S_ISLNK(st.st_mode):
                    entry(out, ino, stat.S_IFLNK | 0o777, rel,
                          os.readlink(path).encode())
                elif stat.S_ISDIR(st.st_mode):
                    entry(out, ino, stat.S_IFDIR | perm, rel)
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        entry(out, ino, stat.S_IFREG | perm, rel, f.read())
                else:
                    sys.exit(f"mkcpio: unsupported file type: {path}")
                ino += 1
        for spec in args.node:
            path, mode, kind, major, minor = spec.split(":")
            fmt = stat.S_IFCHR if kind == "c" else stat.S_IFBLK
            entry(out, ino, fmt | int(mode, 8), path,
                  rdev=(int(major), int(minor)))
            ino += 1
        entry(out, 0, 0, "TRAILER!!!")


if __name__ == "__main__":
    main()
