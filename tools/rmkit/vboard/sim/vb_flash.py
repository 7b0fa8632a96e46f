# The virtual board's flash filesystem: the host flash directory mounted as `/`.
#
# A thin VFS object over vfs.VfsPosix, so that the flash looks like ESP32_GENERIC's littlefs
# partition (2 MiB at 0x200000 in the port's 4 MB partition table, 4 KiB blocks):
# - rename(): VfsPosix builds both paths in one shared buffer, so rename("/a.tmp", "/a") with two
#   absolute paths renames "/a" onto itself and fails with ENOENT. On an ESP32 (littlefs) that
#   call is the normal way to replace a file atomically, so renames with two absolute paths go
#   through a root-less VfsPosix with full host paths instead.
# - ilistdir() gives littlefs's 4-tuples (name, type, inode 0, size), so `mpremote fs ls` shows sizes;
# - statvfs() reports the partition, with the blocks in use counted as littlefs would (two per
#   directory, whole blocks per file), so `mpremote df` prints what a board prints;
# - it prints as <VfsLfs2>, the name `mpremote df` shows for a board's filesystem;
# - a write that needs a block when none is free fails with OSError(28) (ENOSPC), as littlefs's
#   does: a file open for writing may grow by the blocks statvfs() called free when it was opened.
import io
import vfs

_BLOCK = 4096
_BLOCKS = 512  # 2 MiB
_DIR = 0x4000


class Flash:
    def __init__(self, host_dir):
        self._root = host_dir.rstrip("/")
        self._fs = vfs.VfsPosix(host_dir)
        self._host = vfs.VfsPosix()
        # What needs no change is VfsPosix's own method, not a Python one that calls it: an error then has no
        # frame of this file in its traceback, as on a board, whose VFS is C (mpremote's `fs cp` stats each
        # file it copies and reads the ENOENT back, and os.stat() of a missing file is everyday REPL use).
        self.stat = self._fs.stat
        self.chdir = self._fs.chdir
        self.getcwd = self._fs.getcwd
        self.mkdir = self._fs.mkdir
        self.remove = self._fs.remove
        self.rmdir = self._fs.rmdir

    def mount(self, readonly, mkfs):
        self._fs.mount(readonly, mkfs)

    def umount(self):
        self._fs.umount()

    def rename(self, old, new):
        if old.startswith("/") and new.startswith("/"):
            return self._host.rename(self._root + old, self._root + new)
        return self._fs.rename(old, new)

    def open(self, path, mode):
        f = self._fs.open(path, mode)
        if "r" in mode and "+" not in mode:
            return f
        # after open(): "w" has truncated the file, so statvfs() counts it as it now is
        size = f.seek(0, 2)
        if "a" not in mode:
            f.seek(0)
        room = ((size + _BLOCK - 1) // _BLOCK + self.statvfs("/")[3]) * _BLOCK
        return _Bounded(f, size, room, "a" in mode)

    def __repr__(self):
        return "<VfsLfs2>"

    def ilistdir(self, path):
        base = path.rstrip("/")
        for entry in self._fs.ilistdir(path):
            size = 0
            if entry[1] != _DIR:
                try:
                    size = self._fs.stat(base + "/" + entry[0])[6]
                except OSError:  # removed meanwhile
                    pass
            yield (entry[0], entry[1], 0, size)

    def statvfs(self, path):
        used = 2 + self._blocks("/")  # the root directory's metadata pair
        free = max(0, _BLOCKS - used)
        return (_BLOCK, _BLOCK, _BLOCKS, free, free, 0, 0, 0, 0, 255)

    def _blocks(self, path):
        blocks = 0
        base = path.rstrip("/")
        for entry in self._fs.ilistdir(path):
            child = base + "/" + entry[0]
            if entry[1] == _DIR:
                blocks += 2 + self._blocks(child)
            else:
                try:
                    blocks += (self._fs.stat(child)[6] + _BLOCK - 1) // _BLOCK
                except OSError:
                    pass
        return blocks


class _Bounded(io.IOBase):
    """A file open for writing on the flash: a write past `room` bytes raises OSError(28) (ENOSPC)."""

    def __init__(self, f, size, room, append):
        self._f = f
        self._size = size
        self._room = room
        self._append = append

    def write(self, data):
        end = (self._size if self._append else self._f.tell()) + len(data)
        if end > self._room:
            raise OSError(28)  # ENOSPC: littlefs found no free block
        n = self._f.write(data)
        if end > self._size:
            self._size = end
        return n

    def read(self, *n):
        return self._f.read(*n)

    def readinto(self, buf, *n):
        return self._f.readinto(buf, *n)

    def readline(self, *n):
        return self._f.readline(*n)

    def seek(self, *args):
        return self._f.seek(*args)

    def tell(self):
        return self._f.tell()

    def flush(self):
        return self._f.flush()

    def close(self):
        return self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
