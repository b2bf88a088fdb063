import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// A validated, memory-mapped safetensors reader.
//
// Layout: 8 bytes little-endian u64 header length N, N bytes of UTF-8 JSON, then the data
// section. The JSON is an object mapping tensor names to {"dtype", "shape", "data_offsets"}
// (offsets relative to the data section) plus an optional "__metadata__" string map.
// Every byte is treated as hostile: see DESIGN.md §5. All checks happen in `init`; after it
// returns, every TensorInfo's byte range lies inside the mapping and matches its shape.
//
// Tensors of a dtype the format defines but this library does not read (e.g. the int64
// `position_ids` buffer of 2022 CLIP checkpoints) are validated like the others (shape, offsets)
// and do not fail the load; only reading one fails (`.unsupported`, naming the tensor and dtype).

/// The element types this library reads. Other safetensors dtypes are refused by name when read.
public enum DType: String, Sendable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        }
    }

    /// Converts `count` elements stored at `src` (any alignment, little-endian) to Float32,
    /// exactly (f16 subnormals, infinities and NaN payloads included).
    public func convert(_ src: UnsafeRawPointer, count: Int, to dst: UnsafeMutablePointer<Float>) {
        switch self {
        case .f32: UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: count * 4)
        case .f16: DType.f16ToF32(src, dst, count)
        case .bf16: DType.bf16ToF32(src, dst, count)
        }
    }

    /// Exact IEEE binary16 -> binary32, branch-free so the loop vectorises.
    /// Normal and subnormal halves: put exponent+mantissa at the float's mantissa/exponent position
    /// and scale by 2^112 (exact: a power of two, result always a normal float). Inf/NaN: force the
    /// exponent to all ones and keep the mantissa (payload, quiet bit) shifted into place.
    @inline(__always)
    public static func f16ToF32(bits h: UInt16) -> Float {
        let x = UInt32(h)
        let sign = (x & 0x8000) << 16
        let em = x & 0x7FFF
        let scaled = Float(bitPattern: em << 13) * Float(bitPattern: 0x7780_0000)  // 2^112
        let special = 0x7F80_0000 | (em & 0x03FF) << 13
        let mag = em >= 0x7C00 ? special : scaled.bitPattern
        return Float(bitPattern: sign | mag)
    }

    /// Exact bfloat16 -> binary32 (bfloat16 is the top half of a binary32).
    @inline(__always)
    public static func bf16ToF32(bits h: UInt16) -> Float {
        Float(bitPattern: UInt32(h) << 16)
    }

    private static func f16ToF32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        if Int(bitPattern: src) & 1 == 0 {
            let s = src.assumingMemoryBound(to: UInt16.self)
            for k in 0..<count { dst[k] = f16ToF32(bits: UInt16(littleEndian: s[k])) }
        } else {
            for k in 0..<count {
                dst[k] = f16ToF32(bits: UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self)))
            }
        }
    }

    private static func bf16ToF32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        if Int(bitPattern: src) & 1 == 0 {
            let s = src.assumingMemoryBound(to: UInt16.self)
            for k in 0..<count { dst[k] = bf16ToF32(bits: UInt16(littleEndian: s[k])) }
        } else {
            for k in 0..<count {
                dst[k] = bf16ToF32(bits: UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self)))
            }
        }
    }
}

public struct TensorInfo: Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Byte range relative to the start of the data section.
    public let byteRange: Range<Int>

    /// Number of elements (the product of `shape`; 1 for a scalar).
    public var count: Int { byteRange.count / dtype.byteSize }
}

/// A tensor of a dtype the safetensors format defines but this library does not read.
struct UnreadableTensor {
    let name: String
    let dtype: String
    let shape: [Int]
    let byteRange: Range<Int>
}

public final class SafeTensorsFile {
    public let path: String
    private let tensors: [String: TensorInfo]
    private let unreadable: [String: UnreadableTensor]
    /// Every tensor in the file, sorted, including those of dtypes this library does not read
    /// (for which `info` is nil).
    public let names: [String]
    public let metadata: [String: String]
    /// How layers built from this file compute (set by the loader before it builds them; read
    /// when a layer packs its weights).
    public var precision: Precision = .exact

    /// The whole mapping (nil only for a mapping we did not make, never after init).
    private let mapBase: UnsafeMutableRawPointer
    private let mapLength: Int
    /// Byte offset of the data section within the file.
    private let dataStart: Int
    /// For a view (one component of a single-file checkpoint): the file that owns the mapping.
    private let owner: SafeTensorsFile?

    /// Safetensors headers larger than this are refused (the format's own reader caps at 100 MB).
    public static let maxHeaderLength = 100_000_000

    /// dtype names the safetensors format defines that this library does not read, with their
    /// bits per element: such tensors may be present (and are validated) but not read. Any other
    /// dtype name makes the file invalid.
    private static let knownDTypeBits: [String: Int] = [
        "BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "I32": 32, "U32": 32, "I64": 64, "U64": 64,
        "F64": 64, "C64": 64, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F6_E2M3": 6, "F6_E3M2": 6, "F4": 4,
    ]

    /// Opens, maps and validates `path`. Throws `.io` if it cannot be read and `.invalidFile` /
    /// `.unsupported` (with the reason and the path) if its content is not an acceptable file.
    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)  // a FIFO must not block the open; non-regular files are refused below
        if fd < 0 {
            let e = errno
            throw DiffusionError(.io, "cannot open \(path): \(String(cString: strerror(e)))")
        }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) != 0 {
            let e = errno
            throw DiffusionError(.io, "cannot stat \(path): \(String(cString: strerror(e)))")
        }
        if (st.st_mode & S_IFMT) != S_IFREG {
            throw DiffusionError(.io, "\(path) is not a regular file")
        }
        let size = Int(st.st_size)
        if size < 8 {
            throw DiffusionError(.invalidFile, "\(path): file is \(size) bytes, shorter than the 8-byte safetensors header length")
        }
        guard let map = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), map != MAP_FAILED else {
            let e = errno
            throw DiffusionError(.io, "cannot mmap \(path): \(String(cString: strerror(e)))")
        }
        // From here on the mapping must be released on failure.
        var parsed: Parsed
        do {
            parsed = try SafeTensorsFile.validate(UnsafeRawPointer(map), size: size)
        } catch let error as DiffusionError {
            munmap(map, size)
            throw error.context(path)
        } catch {
            munmap(map, size)
            throw DiffusionError(.internal, "\(path): \(error)")
        }
        mapBase = map
        mapLength = size
        dataStart = parsed.dataStart
        tensors = parsed.tensors
        unreadable = parsed.unreadable
        names = (Array(parsed.tensors.keys) + Array(parsed.unreadable.keys)).sorted()
        metadata = parsed.metadata
        owner = nil
    }

    /// A view of some of `file`'s tensors under other names (and shapes of the same element
    /// count), over the same mapping: a component of a single-file checkpoint as the layers'
    /// loaders name it. `label` names it in messages ("path (unet)").
    public init(view file: SafeTensorsFile, tensors table: [String: TensorInfo], label: String) {
        owner = file.owner ?? file
        path = label
        mapBase = file.mapBase
        dataStart = file.dataStart
        tensors = table
        unreadable = [:]
        names = table.keys.sorted()
        metadata = file.metadata
        mapLength = table.values.reduce(0) { $0 + $1.byteRange.count }
        precision = file.precision
    }

    deinit {
        if owner == nil { munmap(mapBase, mapLength) }
    }

    /// Bytes mapped (the whole file; a view: its tensors' bytes).
    public var mappedBytes: Int { mapLength }

    /// The weights' planned memory: the mapping plus what the layers' packed copies hold beyond
    /// the weights they replace (known once the model is built).
    public var plannedBytes: Int { mapLength + packedCopies.withLock { $0.reduce(0) { $0 + ($1.value?.extraBytes ?? 0) } } }

    /// Hands back the whole pages inside `bytes` (part of this mapping), as `releaseResidentPages`
    /// does for all of it.
    func releasePages(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (Int(bitPattern: base) + page - 1) / page * page
        let end = (Int(bitPattern: base) + bytes.count) / page * page
        guard end > start, let p = UnsafeMutableRawPointer(bitPattern: start) else { return }
        _ = madvise(p, end - start, MADV_DONTNEED)
    }

    /// The tensor's description, or nil when it is absent or of a dtype this library does not read.
    public func info(_ name: String) -> TensorInfo? {
        if tracksReads { reads.withLock { _ = $0.insert(name) } }
        return tensors[name]
    }

    /// Whether `info` records the names asked for (a single-file component, whose keys must all
    /// be used by the model built from it).
    public var tracksReads = false
    private let reads = Locked<Set<String>>([])

    /// Tensors no one asked for, sorted.
    public var unreadNames: [String] {
        let asked = reads.withLock { $0 }
        return names.filter { !asked.contains($0) }
    }

    /// Hands the mapping's resident pages back to the page cache (they fault in again, from the
    /// cache, when next read): a pipeline stage that is done with a component stops counting its
    /// weights in the process's memory. Safe while other threads read the weights.
    /// Layers' packed copies of its weights are freed too (they pack again when next used).
    public func releaseResidentPages() {
        for p in packedCopies.withLock({ $0.compactMap(\.value) }) { p.drop() }
        if owner == nil {
            _ = madvise(mapBase, mapLength, MADV_DONTNEED)
        } else {
            for info in tensors.values { releasePages(rawBytes(info)) }
        }
    }

    private struct WeakPacked { weak var value: PackedPanels? }
    private let packedCopies = Locked<[WeakPacked]>([])

    /// A layer's packed copy of some of this file's weights, freed by `releaseResidentPages`.
    func register(_ p: PackedPanels) {
        packedCopies.withLock { list in
            list.removeAll { $0.value == nil }
            list.append(WeakPacked(value: p))
        }
    }

    /// The dtype name as the file states it ("F16", "I64", ...), for any tensor in the file.
    public func dtypeName(_ name: String) -> String? { tensors[name]?.dtype.rawValue ?? unreadable[name]?.dtype }

    /// The raw little-endian bytes of a tensor, valid as long as this object is alive.
    /// Not necessarily aligned to the element size.
    public func rawBytes(_ info: TensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: UnsafeRawPointer(mapBase) + dataStart + info.byteRange.lowerBound,
                               count: info.byteRange.count)
    }

    /// Looks `name` up and checks its shape.
    public func checkedInfo(_ name: String, shape: [Int]) throws -> TensorInfo {
        guard let t = info(name) else {
            if let u = unreadable[name] {
                throw DiffusionError(.unsupported, "tensor '\(name)' has dtype \(u.dtype), which this library does not read, in \(path)")
            }
            throw DiffusionError(.modelMismatch, "missing tensor '\(name)' in \(path)")
        }
        guard t.shape == shape else {
            throw DiffusionError(.modelMismatch, "tensor '\(name)' has shape \(t.shape), expected \(shape) in \(path)")
        }
        return t
    }

    /// The tensor in its stored dtype, backed by the mapping, checking it exists and has `shape`.
    public func stored(_ name: String, shape: [Int]) throws -> StoredTensor {
        StoredTensor(file: self, info: try checkedInfo(name, shape: shape))
    }

    /// The tensor converted to Float32 (F16/BF16 converted exactly), checking it exists and has
    /// `shape`.
    public func floats(_ name: String, shape: [Int]) throws -> [Float] {
        let t = try checkedInfo(name, shape: shape)
        let count = t.count
        let src = rawBytes(t)
        return [Float](unsafeUninitializedCapacity: count) { buf, initialized in
            if count > 0 { t.dtype.convert(src.baseAddress!, count: count, to: buf.baseAddress!) }
            initialized = count
        }
    }

    /// Converts the tensor into `dst`, which must hold `shape`'s element count.
    public func floats(_ name: String, shape: [Int], into dst: UnsafeMutableBufferPointer<Float>) throws {
        let t = try checkedInfo(name, shape: shape)
        guard dst.count == t.count else {
            throw DiffusionError(.invalidArgument, "buffer for tensor '\(name)' holds \(dst.count) floats, needs \(t.count)")
        }
        if t.count > 0 { t.dtype.convert(rawBytes(t).baseAddress!, count: t.count, to: dst.baseAddress!) }
    }

    // MARK: - Validation

    private struct Parsed {
        var dataStart: Int
        var tensors: [String: TensorInfo]
        var unreadable: [String: UnreadableTensor]
        var metadata: [String: String]
    }

    private static func bad(_ message: String) -> DiffusionError {
        DiffusionError(.invalidFile, message)
    }

    /// A string from the file, made safe to put in an error message: control and bidi-override
    /// characters escaped, at most 120 characters.
    static func show(_ s: String) -> String {
        var out = ""
        var n = 0
        for u in s.unicodeScalars {
            if n == 120 { out += "…"; break }
            let v = u.value
            if v < 0x20 || (0x7F..<0xA0).contains(v) || (0x2028...0x202E).contains(v) || (0x2066...0x2069).contains(v) {
                out += "\\u{" + String(v, radix: 16, uppercase: true) + "}"
            } else {
                out.unicodeScalars.append(u)
            }
            n += 1
        }
        return out
    }

    private static func validate(_ base: UnsafeRawPointer, size: Int) throws -> Parsed {
        var headerLength64: UInt64 = 0
        for k in 0..<8 { headerLength64 |= UInt64(base.load(fromByteOffset: k, as: UInt8.self)) << (8 * UInt64(k)) }
        if headerLength64 == 0 {
            throw bad("header length is 0")
        }
        if headerLength64 > UInt64(maxHeaderLength) {
            throw bad("header length \(headerLength64) is absurdly large (limit \(maxHeaderLength) bytes)")
        }
        let headerLength = Int(headerLength64)
        if headerLength > size - 8 {
            throw bad("header length \(headerLength) goes beyond the end of the file (\(size) bytes)")
        }
        let header = (base + 8).assumingMemoryBound(to: UInt8.self)
        if let (offset, reason) = UTF8Check.firstError(header, count: headerLength) {
            throw bad("header is not valid UTF-8: \(reason) at header byte \(offset)")
        }
        let json: JSONValue
        do {
            json = try JSONValue.parse(UnsafeRawBufferPointer(start: header, count: headerLength))
        } catch let e as DiffusionError {
            throw bad("header is not valid JSON: \(e.message) (offsets relative to the header start)")
        }
        guard case let .object(members) = json else {
            throw bad("header is not a JSON object")
        }
        let dataSize = size - 8 - headerLength
        let dataStart = 8 + headerLength

        var tensors: [String: TensorInfo] = [:]
        tensors.reserveCapacity(members.count)
        var unreadable: [String: UnreadableTensor] = [:]
        var ranges: [(range: Range<Int>, name: String)] = []
        ranges.reserveCapacity(members.count)
        var metadata: [String: String] = [:]
        var seenMetadata = false

        for (name, value) in members {
            if name == "__metadata__" {
                if seenMetadata { throw bad("duplicate '__metadata__' entry") }
                seenMetadata = true
                guard case let .object(pairs) = value else {
                    throw bad("'__metadata__' is not an object")
                }
                for (k, v) in pairs {
                    guard case let .string(s) = v else {
                        throw bad("'__metadata__' value for '\(show(k))' is not a string")
                    }
                    if metadata[k] != nil { throw bad("duplicate key '\(show(k))' in '__metadata__'") }
                    metadata[k] = s
                }
                continue
            }
            if tensors[name] != nil || unreadable[name] != nil { throw bad("duplicate tensor name '\(show(name))'") }
            switch try parseEntry(name, value) {
            case .readable(let t):
                tensors[name] = t
                ranges.append((t.byteRange, name))
            case .unreadable(let u):
                unreadable[name] = u
                ranges.append((u.byteRange, name))
            }
        }

        // Offsets: contiguous from 0, no holes, no overlaps, covering the data section exactly.
        let sorted = ranges.sorted {
            ($0.range.lowerBound, $0.range.upperBound, $0.name) < ($1.range.lowerBound, $1.range.upperBound, $1.name)
        }
        var expected = 0
        for t in sorted {
            let r = t.range
            if r.lowerBound < expected {
                throw bad("tensor '\(show(t.name))' data_offsets [\(r.lowerBound), \(r.upperBound)] overlap the previous tensor (which ends at \(expected))")
            }
            if r.lowerBound > expected {
                throw bad("hole in the data section: bytes \(expected)..<\(r.lowerBound) before tensor '\(show(t.name))' belong to no tensor")
            }
            expected = r.upperBound
        }
        if expected != dataSize {
            if expected > dataSize {
                throw bad("tensor data ends at byte \(expected) of the data section, beyond its size \(dataSize) (file truncated?)")
            }
            throw bad("tensor data ends at byte \(expected) of the data section but the data section has \(dataSize) bytes (trailing bytes)")
        }
        return Parsed(dataStart: dataStart, tensors: tensors, unreadable: unreadable, metadata: metadata)
    }

    /// A JSON number that is a non-negative integer small enough to be exact, or nil.
    private static func nonNegativeInteger(_ v: JSONValue) -> Int? {
        guard case let .number(d) = v, d >= 0, d < 9_007_199_254_740_992, d.rounded(.towardZero) == d else { return nil }
        return Int(d)
    }

    private enum Entry {
        case readable(TensorInfo)
        case unreadable(UnreadableTensor)
    }

    private static func parseEntry(_ name: String, _ value: JSONValue) throws -> Entry {
        guard case let .object(fields) = value else {
            throw bad("entry for tensor '\(show(name))' is not an object")
        }
        var dtypeValue: JSONValue?, shapeValue: JSONValue?, offsetsValue: JSONValue?
        for (k, v) in fields {
            switch k {
            case "dtype":
                if dtypeValue != nil { throw bad("duplicate key 'dtype' in entry for tensor '\(show(name))'") }
                dtypeValue = v
            case "shape":
                if shapeValue != nil { throw bad("duplicate key 'shape' in entry for tensor '\(show(name))'") }
                shapeValue = v
            case "data_offsets":
                if offsetsValue != nil { throw bad("duplicate key 'data_offsets' in entry for tensor '\(show(name))'") }
                offsetsValue = v
            default:
                throw bad("unexpected key '\(show(k))' in entry for tensor '\(show(name))'")
            }
        }
        guard let dtypeValue else { throw bad("entry for tensor '\(show(name))' is missing 'dtype'") }
        guard let shapeValue else { throw bad("entry for tensor '\(show(name))' is missing 'shape'") }
        guard let offsetsValue else { throw bad("entry for tensor '\(show(name))' is missing 'data_offsets'") }

        guard case let .string(dtypeName) = dtypeValue else {
            throw bad("'dtype' of tensor '\(show(name))' is not a string")
        }
        let dtype = DType(rawValue: dtypeName)
        guard let bits = dtype.map({ $0.byteSize * 8 }) ?? knownDTypeBits[dtypeName] else {
            throw bad("unsupported dtype '\(show(dtypeName))' for tensor '\(show(name))' (not a safetensors dtype)")
        }

        guard case let .array(dims) = shapeValue else {
            throw bad("'shape' of tensor '\(show(name))' is not an array")
        }
        var shape: [Int] = []
        shape.reserveCapacity(dims.count)
        var elements = 1
        var overflow = false
        for d in dims {
            guard let v = nonNegativeInteger(d) else {
                throw bad("'shape' of tensor '\(show(name))' has entry \(show(d.serialized)), not a non-negative integer below 2^53")
            }
            shape.append(v)
            let (m, o) = elements.multipliedReportingOverflow(by: v)
            elements = m
            overflow = overflow || o
        }
        // Refused even when a later dimension is 0: such a shape is absurd either way.
        // Whole-byte dtypes: elements · bytes; sub-byte ones (F4, F6_*): elements · bits, whole bytes only.
        let (scaled, o2) = elements.multipliedReportingOverflow(by: bits % 8 == 0 ? bits / 8 : bits)
        if overflow || o2 {
            throw bad("shape \(shape) of tensor '\(show(name))' has a byte size that overflows 64 bits")
        }
        guard bits % 8 == 0 || scaled % 8 == 0 else {
            throw bad("tensor '\(show(name))' with dtype \(show(dtypeName)) and shape \(shape) does not fill whole bytes")
        }
        let bytes = bits % 8 == 0 ? scaled : scaled / 8

        guard case let .array(offs) = offsetsValue, offs.count == 2,
              let begin = nonNegativeInteger(offs[0]), let end = nonNegativeInteger(offs[1]) else {
            throw bad("'data_offsets' of tensor '\(show(name))' is not two non-negative integers below 2^53")
        }
        guard begin <= end else {
            throw bad("'data_offsets' of tensor '\(show(name))' begin \(begin) > end \(end)")
        }
        guard end - begin == bytes else {
            throw bad("tensor '\(show(name))' with dtype \(show(dtypeName)) and shape \(shape) needs \(bytes) bytes but data_offsets [\(begin), \(end)] span \(end - begin)")
        }
        guard let dtype else {
            return .unreadable(UnreadableTensor(name: name, dtype: dtypeName, shape: shape, byteRange: begin..<end))
        }
        return .readable(TensorInfo(name: name, dtype: dtype, shape: shape, byteRange: begin..<end))
    }
}
