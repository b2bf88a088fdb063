#if canImport(Glibc)
import Glibc
#endif

enum FileIO {
    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    static func isRegularFile(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    static func exists(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0
    }

    /// The whole file, refusing anything over `limit` bytes (config files are small).
    static func read(_ path: String, limit: Int = 16 << 20) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)  // a FIFO must not block the open; non-regular files are refused below
        guard fd >= 0 else { throw DiffusionError(.io, "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw DiffusionError(.io, "\(path) is not a regular file")
        }
        guard Int(st.st_size) <= limit else {
            throw DiffusionError(.invalidFile, "\(path) is \(st.st_size) bytes, over the \(limit)-byte limit for a config file")
        }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw DiffusionError(.io, "cannot read \(path)") }
            done += n
        }
        return bytes
    }

    static func readJSON(_ path: String) throws -> JSONValue {
        let bytes = try read(path)
        do {
            return try bytes.withUnsafeBytes { try JSONValue.parse($0, pythonConstants: true) }
        } catch let e as DiffusionError {
            throw e.context(path)
        }
    }
}
