# The virtual board's flash filesystem: the host flash directory mounted as `/`.
#
# A thin VFS object over vfs.VfsPosix. It exists for one quirk of the unix port: VfsPosix
# builds both paths of rename() in one shared buffer, so rename("/a.tmp", "/a") with two
# absolute paths renames "/a" onto itself and fails with ENOENT. On an ESP32 (littlefs) that
# call is the normal way to replace a file atomically, so the board must support it. Renames with
# two absolute paths go through a root-less VfsPosix with full host paths instead.
import vfs


class Flash:
    def __init__(self, host_dir):
        self._root = host_dir.rstrip("/")
        self._fs = vfs.VfsPosix(host_dir)
        self._host = vfs.VfsPosix()

    def mount(self, readonly, mkfs):
        self._fs.mount(readonly, mkfs)

    def umount(self):
        self._fs.umount()

    def rename(self, old, new):
        if old.startswith("/") and new.startswith("/"):
            return self._host.rename(self._root + old, self._root + new)
        return self._fs.rename(old, new)

    def open(self, path, mode):
        return self._fs.open(path, mode)

    def ilistdir(self, path):
        return self._fs.ilistdir(path)

    def chdir(self, path):
        return self._fs.chdir(path)

    def getcwd(self):
        return self._fs.getcwd()

    def mkdir(self, path):
        return self._fs.mkdir(path)

    def remove(self, path):
        return self._fs.remove(path)

    def rmdir(self, path):
        return self._fs.rmdir(path)

    def stat(self, path):
        return self._fs.stat(path)

    def statvfs(self, path):
        return self._fs.statvfs(path)
