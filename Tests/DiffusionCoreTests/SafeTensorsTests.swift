import Foundation
import Testing
import DiffusionCore

// MARK: - Helpers

/// A fresh directory for one test's files.
private func tempDir() -> String {
    let dir = NSTemporaryDirectory() + "safetensors-tests-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// Writes raw bytes to a new file and returns its path.
private func writeRaw(_ bytes: [UInt8], in dir: String, name: String = "t.safetensors") -> String {
    let path = dir + "/" + name
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
    return path
}

/// 8-byte header length (LE, `headerLength` overrides the true one) + header + data.
private func fileBytes(header: String, data: [UInt8] = [], headerLength: UInt64? = nil) -> [UInt8] {
    let h = Array(header.utf8)
    let n = headerLength ?? UInt64(h.count)
    var out: [UInt8] = (0..<8).map { UInt8(truncatingIfNeeded: n >> (8 * UInt64($0))) }
    out += h
    out += data
    return out
}

private func writeFile(header: String, data: [UInt8] = [], headerLength: UInt64? = nil, in dir: String) -> String {
    writeRaw(fileBytes(header: header, data: data, headerLength: headerLength), in: dir)
}

/// A tensor to put into a well-formed file.
private struct T {
    var name: String
    var dtype: String
    var shape: [Int]
    var bytes: [UInt8]
}

/// A well-formed header + data for `tensors`, laid out in the given order.
private func wellFormed(_ tensors: [T], metadata: [String: String]? = nil, padTo alignment: Int = 1) -> (String, [UInt8]) {
    var parts: [String] = []
    if let metadata {
        let m = metadata.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\"\($0.value)\"" }.joined(separator: ",")
        parts.append("\"__metadata__\":{\(m)}")
    }
    var data: [UInt8] = []
    for t in tensors {
        let begin = data.count
        data += t.bytes
        parts.append("\"\(t.name)\":{\"dtype\":\"\(t.dtype)\",\"shape\":\(t.shape),\"data_offsets\":[\(begin),\(data.count)]}")
    }
    var header = "{" + parts.joined(separator: ",") + "}"
    while header.utf8.count % alignment != 0 { header += " " }
    return (header, data)
}

private func leBytes<U: FixedWidthInteger>(_ values: [U]) -> [UInt8] {
    values.flatMap { v in (0..<(U.bitWidth / 8)).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
}

private func f32Bytes(_ values: [Float]) -> [UInt8] { leBytes(values.map(\.bitPattern)) }

/// Runs `body` and expects a DiffusionError with `code` whose message contains every phrase.
private func expectError(_ code: DiffusionError.Code, _ phrases: String..., sourceLocation: SourceLocation = #_sourceLocation,
                         _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected \(code) error containing \(phrases), got success", sourceLocation: sourceLocation)
    } catch let e as DiffusionError {
        #expect(e.code == code, "code \(e.code) for: \(e.message)", sourceLocation: sourceLocation)
        for p in phrases {
            #expect(e.message.contains(p), "'\(e.message)' lacks '\(p)'", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("non-DiffusionError \(error)", sourceLocation: sourceLocation)
    }
}

/// A header that must be refused as invalid, with a phrase in the message (and the path).
private func expectInvalidHeader(_ header: String, data: [UInt8] = [], _ phrases: String...,
                                 code: DiffusionError.Code = .invalidFile,
                                 sourceLocation: SourceLocation = #_sourceLocation) {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let path = writeFile(header: header, data: data, in: dir)
    do {
        _ = try SafeTensorsFile(path: path)
        Issue.record("expected error containing \(phrases) for header \(header)", sourceLocation: sourceLocation)
    } catch let e as DiffusionError {
        #expect(e.code == code, "code \(e.code) for: \(e.message)", sourceLocation: sourceLocation)
        #expect(e.message.contains(path), "'\(e.message)' does not name the file", sourceLocation: sourceLocation)
        for p in phrases {
            #expect(e.message.contains(p), "'\(e.message)' lacks '\(p)'", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("non-DiffusionError \(error)", sourceLocation: sourceLocation)
    }
}

/// A deterministic PRNG (SplitMix64) so fuzz failures reproduce; also the arena tests' traces.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: - Tests

@Suite struct SafeTensorsTests {
    // Half bit patterns and their exact Float32 values.
    static let f16Cases: [(UInt16, UInt32)] = [
        (0x0000, 0x0000_0000),  // +0
        (0x8000, 0x8000_0000),  // -0
        (0x3C00, 0x3F80_0000),  // 1
        (0xC000, 0xC000_0000),  // -2
        (0x3555, 0x3EAA_A000),  // 0.333251953125
        (0x7BFF, 0x477F_E000),  // 65504, largest finite
        (0x0400, 0x3880_0000),  // 2^-14, smallest normal
        (0x0001, 0x3380_0000),  // 2^-24, smallest subnormal
        (0x8001, 0xB380_0000),  // -2^-24
        (0x03FF, 0x387F_C000),  // largest subnormal 1023 * 2^-24
        (0x0200, 0x3800_0000),  // 2^-15
        (0x7C00, 0x7F80_0000),  // +inf
        (0xFC00, 0xFF80_0000),  // -inf
        (0x7E00, 0x7FC0_0000),  // quiet NaN
        (0xFE01, 0xFFC0_2000),  // negative quiet NaN with payload
        (0x7C01, 0x7F80_2000),  // signalling NaN, payload kept
    ]
    static let bf16Cases: [(UInt16, UInt32)] = [
        (0x0000, 0x0000_0000), (0x8000, 0x8000_0000), (0x3F80, 0x3F80_0000), (0xC040, 0xC040_0000),
        (0x0001, 0x0001_0000),  // subnormal
        (0x0080, 0x0080_0000),  // smallest normal
        (0x7F7F, 0x7F7F_0000),  // largest finite
        (0x7F80, 0x7F80_0000), (0xFF80, 0xFF80_0000), (0x7FC0, 0x7FC0_0000), (0x7F81, 0x7F81_0000),
    ]

    @Test func f16ConversionMatchesFloat16ForAllPatterns() {
        var mismatches: [UInt16] = []
        for bits in 0...UInt16.max {
            let mine = DType.f16ToF32(bits: bits)
            let reference = Float(Float16(bitPattern: bits))
            let same = reference.isNaN ? (mine.isNaN && mine.sign == reference.sign) : mine.bitPattern == reference.bitPattern
            if !same { mismatches.append(bits) }
        }
        #expect(mismatches.isEmpty, "\(mismatches.count) mismatches, first: \(mismatches.prefix(8).map { String($0, radix: 16) })")
        for (h, f) in Self.f16Cases { #expect(DType.f16ToF32(bits: h).bitPattern == f, "0x\(String(h, radix: 16))") }
        for (h, f) in Self.bf16Cases { #expect(DType.bf16ToF32(bits: h).bitPattern == f, "0x\(String(h, radix: 16))") }
    }

    @Test(arguments: [1, 8, 3])  // header padding: 1 and 3 give an odd data start (unaligned reads)
    func roundTripsAllDTypes(alignment: Int) throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f32: [Float] = [1, -2.5, .infinity, -0.0, .leastNonzeroMagnitude, 3.4e38]
        let tensors = [
            T(name: "w.f32", dtype: "F32", shape: [2, 3], bytes: f32Bytes(f32)),
            T(name: "a.f16", dtype: "F16", shape: [Self.f16Cases.count], bytes: leBytes(Self.f16Cases.map(\.0))),
            T(name: "b.bf16", dtype: "BF16", shape: [Self.bf16Cases.count], bytes: leBytes(Self.bf16Cases.map(\.0))),
            T(name: "scalar", dtype: "F32", shape: [], bytes: f32Bytes([42])),
            T(name: "empty", dtype: "F16", shape: [3, 0, 2], bytes: []),
            T(name: "odd", dtype: "F16", shape: [3], bytes: leBytes([UInt16(0x3C00), 0x4000, 0x4200])),
            T(name: "tail", dtype: "BF16", shape: [1, 1], bytes: leBytes([UInt16(0xBF80)])),
        ]
        let (header, data) = wellFormed(tensors, metadata: ["format": "pt", "note": "é"], padTo: alignment)
        let file = try SafeTensorsFile(path: writeFile(header: header, data: data, in: dir))
        #expect(file.names == ["a.f16", "b.bf16", "empty", "odd", "scalar", "tail", "w.f32"])
        #expect(file.metadata == ["format": "pt", "note": "é"])

        let w = try file.floats("w.f32", shape: [2, 3])
        #expect(w.map(\.bitPattern) == f32.map(\.bitPattern))
        let a = try file.floats("a.f16", shape: [Self.f16Cases.count])
        #expect(a.map(\.bitPattern) == Self.f16Cases.map(\.1))
        let b = try file.floats("b.bf16", shape: [Self.bf16Cases.count])
        #expect(b.map(\.bitPattern) == Self.bf16Cases.map(\.1))
        #expect(try file.floats("scalar", shape: []) == [42])
        #expect(try file.floats("empty", shape: [3, 0, 2]) == [])
        #expect(try file.floats("odd", shape: [3]) == [1, 2, 3])
        #expect(try file.floats("tail", shape: [1, 1]) == [-1])

        let info = try #require(file.info("a.f16"))
        #expect(info.dtype == .f16)
        #expect(info.shape == [Self.f16Cases.count])
        #expect(info.byteRange == 24..<(24 + 2 * Self.f16Cases.count))
        #expect(file.info("empty")?.byteRange.isEmpty == true)
        #expect(file.info("nope") == nil)
        #expect(file.rawBytes(info).count == 2 * Self.f16Cases.count)

        var buffer = [Float](repeating: 0, count: 6)
        try buffer.withUnsafeMutableBufferPointer { try file.floats("w.f32", shape: [2, 3], into: $0) }
        #expect(buffer.map(\.bitPattern) == f32.map(\.bitPattern))
    }

    @Test func largeF16TensorConvertsLikeFloat16() throws {
        // Long enough to exercise the vectorised loop, at an odd and at an even data start.
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bits = (0..<70_001).map { UInt16(truncatingIfNeeded: $0 &* 40503) }
        for pad in [1, 2] {
            let (header, data) = wellFormed([T(name: "x", dtype: "F16", shape: [bits.count], bytes: leBytes(bits))], padTo: pad)
            let file = try SafeTensorsFile(path: writeFile(header: header, data: data, in: dir))
            let got = try file.floats("x", shape: [bits.count])
            for (k, h) in bits.enumerated() {
                let r = Float(Float16(bitPattern: h))
                if r.isNaN { #expect(got[k].isNaN) } else if got[k].bitPattern != r.bitPattern {
                    Issue.record("element \(k) 0x\(String(h, radix: 16)): \(got[k]) != \(r)")
                    break
                }
            }
        }
    }

    @Test func emptyFileOfTensorsIsValid() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = try SafeTensorsFile(path: writeFile(header: "{}", in: dir))
        #expect(file.names.isEmpty)
        #expect(file.metadata.isEmpty)
        let padded = try SafeTensorsFile(path: writeFile(header: "{\"__metadata__\":{}}      ", in: dir))
        #expect(padded.names.isEmpty)
        // Only empty tensors, no data.
        let onlyEmpty = try SafeTensorsFile(path: writeFile(
            header: #"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"BF16","shape":[4,0],"data_offsets":[0,0]}}"#,
            in: dir))
        #expect(onlyEmpty.names == ["a", "b"])
        #expect(try onlyEmpty.floats("b", shape: [4, 0]) == [])
    }

    @Test func tensorsOutOfHeaderOrderAndEmptyInTheMiddle() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let header = """
        {"z":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},
         "e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},
         "a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}
        """
        let file = try SafeTensorsFile(path: writeFile(header: header, data: f32Bytes([1, 2]), in: dir))
        #expect(try file.floats("a", shape: [1]) == [1])
        #expect(try file.floats("z", shape: [1]) == [2])
    }

    @Test func ioErrors() {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        expectError(.io, "cannot open", dir + "/missing.safetensors") { _ = try SafeTensorsFile(path: dir + "/missing.safetensors") }
        expectError(.io, "not a regular file") { _ = try SafeTensorsFile(path: dir) }
    }

    @Test func modelMismatch() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (header, data) = wellFormed([T(name: "w", dtype: "F32", shape: [2, 3], bytes: f32Bytes([1, 2, 3, 4, 5, 6]))])
        let path = writeFile(header: header, data: data, in: dir)
        let file = try SafeTensorsFile(path: path)
        expectError(.modelMismatch, "missing tensor 'nope'", path) { _ = try file.floats("nope", shape: [1]) }
        expectError(.modelMismatch, "tensor 'w' has shape [2, 3], expected [3, 2]") { _ = try file.floats("w", shape: [3, 2]) }
        expectError(.modelMismatch, "expected [6]") { _ = try file.floats("w", shape: [6]) }
        var small = [Float](repeating: 0, count: 5)
        expectError(.invalidArgument, "holds 5 floats, needs 6") {
            try small.withUnsafeMutableBufferPointer { try file.floats("w", shape: [2, 3], into: $0) }
        }
    }

    @Test func headerLengthAndSize() {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for n in [0, 1, 7] {
            let path = writeRaw([UInt8](repeating: 0, count: n), in: dir, name: "short\(n)")
            expectError(.invalidFile, "shorter than the 8-byte", path) { _ = try SafeTensorsFile(path: path) }
        }
        let zero = writeFile(header: "", data: [1, 2, 3], in: dir)
        expectError(.invalidFile, "header length is 0", zero) { _ = try SafeTensorsFile(path: zero) }
        for n: UInt64 in [100_000_001, 1 << 40, UInt64.max, 1 << 63] {
            let path = writeFile(header: "{}", headerLength: n, in: dir)
            expectError(.invalidFile, "absurdly large", path) { _ = try SafeTensorsFile(path: path) }
        }
        let beyond = writeFile(header: "{}", headerLength: 3, in: dir)
        expectError(.invalidFile, "beyond the end of the file", beyond) { _ = try SafeTensorsFile(path: beyond) }
        let onlyLength = writeFile(header: "", headerLength: 2, in: dir)
        expectError(.invalidFile, "beyond the end of the file") { _ = try SafeTensorsFile(path: onlyLength) }
        // Header length covering part of the data: the JSON then has trailing garbage.
        let (h, d) = wellFormed([T(name: "w", dtype: "F32", shape: [1], bytes: f32Bytes([1]))])
        let long = writeFile(header: h, data: d, headerLength: UInt64(h.utf8.count + 2), in: dir)
        expectError(.invalidFile, "not valid") { _ = try SafeTensorsFile(path: long) }
        // Header length too short: truncated JSON.
        let short = writeFile(header: h, data: d, headerLength: UInt64(h.utf8.count - 1), in: dir)
        expectError(.invalidFile, "not valid JSON") { _ = try SafeTensorsFile(path: short) }
    }

    @Test func headerEncodingAndJSON() {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for junk: [UInt8] in [[0xFF], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xE2, 0x82]] {
            let header = Array(#"{"a"#.utf8) + junk + Array(#"":{}}"#.utf8)
            var bytes = leBytes([UInt64(header.count)])
            bytes += header
            let path = writeRaw(bytes, in: dir, name: "utf8-\(junk.count)-\(junk[0])")
            expectError(.invalidFile, "header is not valid UTF-8", path) { _ = try SafeTensorsFile(path: path) }
        }
        expectInvalidHeader(#"{"a":"#, "header is not valid JSON", "end of input")
        expectInvalidHeader(#"{"a":{},}"#, "header is not valid JSON", "trailing comma")
        expectInvalidHeader("{}\0\0\0\0", "header is not valid JSON", "after the document")
        expectInvalidHeader(String(repeating: "[", count: 100_000), "header is not valid JSON", "nesting deeper")
        expectInvalidHeader("[]", "header is not a JSON object")
        expectInvalidHeader("\"x\"", "header is not a JSON object")
        expectInvalidHeader("null    ", "header is not a JSON object")
    }

    @Test func entryShapeAndTypes() {
        let ok = #""dtype":"F32","shape":[1],"data_offsets":[0,4]"#
        let data = f32Bytes([1])
        expectInvalidHeader(#"{"a":1}"#, data: data, "entry for tensor 'a' is not an object")
        expectInvalidHeader(#"{"a":[]}"#, data: data, "entry for tensor 'a' is not an object")
        expectInvalidHeader(#"{"a":{"shape":[1],"data_offsets":[0,4]}}"#, data: data, "tensor 'a' is missing 'dtype'")
        expectInvalidHeader(#"{"a":{"dtype":"F32","data_offsets":[0,4]}}"#, data: data, "tensor 'a' is missing 'shape'")
        expectInvalidHeader(#"{"a":{"dtype":"F32","shape":[1]}}"#, data: data, "tensor 'a' is missing 'data_offsets'")
        expectInvalidHeader(#"{"a":{\#(ok),"extra":1}}"#, data: data, "unexpected key 'extra'", "tensor 'a'")
        expectInvalidHeader(#"{"a":{\#(ok),"dtype":"F32"}}"#, data: data, "duplicate key 'dtype'")
        expectInvalidHeader(#"{"a":{"dtype":32,"shape":[1],"data_offsets":[0,4]}}"#, data: data, "'dtype' of tensor 'a' is not a string")
        expectInvalidHeader(#"{"a":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}"#, data: data, "'shape' of tensor 'a' is not an array")
        expectInvalidHeader(#"{"a":{"dtype":"F32","shape":{},"data_offsets":[0,4]}}"#, data: data, "is not an array")
    }

    /// Tensors of dtypes the format defines but the library does not read (int64 position_ids in
    /// 2022 CLIP checkpoints) load with the file; only reading them fails, naming tensor and dtype.
    @Test func unreadDTypesLoadButCannotBeRead() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (name, bytesPerElement) in [("F64", 8), ("I64", 8), ("U8", 1), ("I8", 1), ("BOOL", 1), ("I32", 4), ("F8_E4M3", 1),
                                        ("U16", 2), ("C64", 8)] {
            let (header, data) = wellFormed([T(name: "pos", dtype: name, shape: [1, 3], bytes: [UInt8](repeating: 0, count: 3 * bytesPerElement)),
                                             T(name: "w", dtype: "F32", shape: [2], bytes: f32Bytes([1, -2]))])
            let path = writeFile(header: header, data: data, in: dir)
            let file = try SafeTensorsFile(path: path)
            #expect(file.names == ["pos", "w"])
            #expect(file.info("pos") == nil)
            #expect(file.dtypeName("pos") == name)
            #expect(file.dtypeName("w") == "F32")
            #expect(try file.floats("w", shape: [2]) == [1, -2])
            expectError(.unsupported, "tensor 'pos' has dtype \(name)", "does not read", path) { _ = try file.floats("pos", shape: [1, 3]) }
            expectError(.unsupported, "tensor 'pos' has dtype \(name)") { _ = try file.stored("pos", shape: [1, 3]) }
        }
        // Their byte sizes are still checked, and their ranges take part in the layout checks.
        expectInvalidHeader(#"{"x":{"dtype":"I64","shape":[2],"data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8),
                            "tensor 'x' with dtype I64 and shape [2] needs 16 bytes")
        expectInvalidHeader(#"{"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                            data: [UInt8](repeating: 0, count: 8), "overlap")
        // Sub-byte dtypes: whole bytes only.
        expectInvalidHeader(#"{"x":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#, data: [0, 0], "does not fill whole bytes")
        expectInvalidHeader(#"{"x":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0], "needs 3 bytes")
        expectInvalidHeader(#"{"x":{"dtype":"I64","shape":[1073741824,1073741824],"data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8),
                            "overflows 64 bits")
    }

    @Test func dtypes() {
        for name in ["f32", "XYZ", "", "F32 "] {
            expectInvalidHeader(#"{"x":{"dtype":"\#(name)","shape":[1],"data_offsets":[0,4]}}"#, data: f32Bytes([1]),
                                "unsupported dtype '\(name)' for tensor 'x'")
        }
    }

    @Test func shapes() {
        func entry(_ shape: String, _ dtype: String = "F32", _ offsets: String = "[0,4]") -> String {
            #"{"a":{"dtype":"\#(dtype)","shape":\#(shape),"data_offsets":\#(offsets)}}"#
        }
        let data = f32Bytes([1])
        expectInvalidHeader(entry("[-1]"), data: data, "'shape' of tensor 'a' has entry -1, not a non-negative integer")
        expectInvalidHeader(entry("[1.5]"), data: data, "has entry 1.5")
        expectInvalidHeader(entry(#"["1"]"#), data: data, "not a non-negative integer")
        expectInvalidHeader(entry("[null]"), data: data, "not a non-negative integer")
        expectInvalidHeader(entry("[[1]]"), data: data, "not a non-negative integer")
        expectInvalidHeader(entry("[1e300]"), data: data, "not a non-negative integer")
        expectInvalidHeader(entry("[9007199254740992]"), data: data, "not a non-negative integer")
        // 2^52 * 2^12 elements: the element count overflows.
        expectInvalidHeader(entry("[4503599627370496, 4096]"), data: data, "overflows 64 bits")
        // 2^31 * 2^31 elements fit, times 4 bytes does not.
        expectInvalidHeader(entry("[2147483648, 2147483648]"), data: data, "overflows 64 bits")
        // Overflow before a zero dimension is still refused.
        expectInvalidHeader(entry("[4503599627370496, 4096, 0]", "F32", "[0,0]"), "overflows 64 bits")
        // Large but representable: then the offsets don't match.
        expectInvalidHeader(entry("[1073741824, 1073741824]", "BF16"), data: data, "needs 2305843009213693952 bytes")
    }

    @Test func dataOffsets() {
        func entry(_ offsets: String, shape: String = "[1]") -> String {
            #"{"a":{"dtype":"F32","shape":\#(shape),"data_offsets":\#(offsets)}}"#
        }
        let data = f32Bytes([1])
        for bad in ["4", "[]", "[0]", "[0,4,8]", "[-4,0]", "[0,4.5]", #"["0","4"]"#, "[0,null]", "{}", "[0,1e20]"] {
            expectInvalidHeader(entry(bad), data: data, "'data_offsets' of tensor 'a' is not two non-negative integers")
        }
        expectInvalidHeader(entry("[8,4]"), data: data + data, "begin 8 > end 4")
        expectInvalidHeader(entry("[0,8]"), data: data + data, "needs 4 bytes but data_offsets [0, 8] span 8")
        expectInvalidHeader(entry("[0,2]"), data: data, "needs 4 bytes")
        expectInvalidHeader(entry("[0,4]", shape: "[0]"), data: data, "needs 0 bytes")
    }

    @Test func layoutOfTheDataSection() {
        let two = f32Bytes([1, 2])
        // Hole at the start.
        expectInvalidHeader(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: two, "hole in the data section", "bytes 0..<4")
        // Hole between tensors.
        expectInvalidHeader("""
            {"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}
            """, data: two + two, "hole in the data section", "tensor 'b'")
        // Overlap.
        expectInvalidHeader("""
            {"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}
            """, data: two, "overlap")
        // Same range twice.
        expectInvalidHeader("""
            {"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}
            """, data: f32Bytes([1]), "overlap")
        // Trailing bytes after the last tensor.
        expectInvalidHeader(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data: two, "trailing bytes")
        expectInvalidHeader("{}", data: [0], "trailing bytes")
        // Data section shorter than the offsets say (truncated file).
        expectInvalidHeader(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: f32Bytes([1]), "beyond its size")
        expectInvalidHeader(#"{"a":{"dtype":"F32","shape":[1048576],"data_offsets":[0,4194304]}}"#, data: [], "beyond its size")
    }

    @Test func duplicatesAndMetadata() {
        let a = #""a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#
        let a2 = #""a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}"#
        expectInvalidHeader("{\(a),\(a2)}", data: f32Bytes([1, 2]), "duplicate tensor name 'a'")
        expectInvalidHeader(#"{"__metadata__":[],\#(a)}"#, data: f32Bytes([1]), "'__metadata__' is not an object")
        expectInvalidHeader(#"{"__metadata__":"x"}"#, "'__metadata__' is not an object")
        expectInvalidHeader(#"{"__metadata__":{"format":1}}"#, "'__metadata__' value for 'format' is not a string")
        expectInvalidHeader(#"{"__metadata__":{"k":null}}"#, "is not a string")
        expectInvalidHeader(#"{"__metadata__":{},"__metadata__":{}}"#, "duplicate '__metadata__'")
        expectInvalidHeader(#"{"__metadata__":{"k":"1","k":"2"}}"#, "duplicate key 'k' in '__metadata__'")
    }

    @Test func hostileNamesAreEscapedAndShortenedInMessages() {
        let long = String(repeating: "x", count: 10_000)
        expectInvalidHeader(#"{"a\n\u001b[31m\u202Eb":1}"#, #"tensor 'a\u{A}\u{1B}[31m\u{202E}b' is not an object"#)
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = writeFile(header: #"{"\#(long)":1}"#, in: dir)
        expectError(.invalidFile, "is not an object", String(repeating: "x", count: 120) + "…'") {
            _ = try SafeTensorsFile(path: path)
        }
        do { _ = try SafeTensorsFile(path: path) } catch let e as DiffusionError { #expect(e.message.count < 400) } catch {}
    }

    @Test func fuzzTruncationsAndByteFlips() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tensors = [
            T(name: "conv.weight", dtype: "F16", shape: [2, 1, 3, 3], bytes: leBytes((0..<18).map { UInt16(0x3C00 + $0) })),
            T(name: "conv.bias", dtype: "F32", shape: [2], bytes: f32Bytes([0.5, -0.5])),
            T(name: "norm.weight", dtype: "BF16", shape: [4], bytes: leBytes([UInt16](repeating: 0x3F80, count: 4))),
            T(name: "empty", dtype: "F32", shape: [0, 7], bytes: []),
        ]
        let (header, data) = wellFormed(tensors, metadata: ["format": "pt"], padTo: 8)
        let valid = fileBytes(header: header, data: data)
        let headerEnd = 8 + header.utf8.count
        _ = try SafeTensorsFile(path: writeRaw(valid, in: dir, name: "valid"))

        var rng = SplitMix64(state: 0x5AFE_7E45)
        let interesting = Array("{}[]\":,0123456789-.eE \\ntrufalsF32BF16I8".utf8) + [0x00, 0x80, 0xC0, 0xED, 0xF4, 0xFF]
        var successes = 0, failures = 0
        for iteration in 0..<3000 {
            var bytes = valid
            switch iteration % 4 {
            case 0:  // truncation anywhere
                bytes.removeLast(Int.random(in: 1...valid.count, using: &rng))
            case 1, 2:  // 1...4 byte changes in the length prefix or header
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    let at = Int.random(in: 0..<headerEnd, using: &rng)
                    bytes[at] = Bool.random(using: &rng) ? interesting.randomElement(using: &rng)!
                                                          : UInt8.random(in: 0...255, using: &rng)
                }
            default:  // delete or duplicate a header byte (shifts everything after it)
                let at = Int.random(in: 8..<headerEnd, using: &rng)
                if Bool.random(using: &rng) { bytes.remove(at: at) } else { bytes.insert(bytes[at], at: at) }
            }
            let path = writeRaw(bytes, in: dir, name: "fuzz\(iteration % 16)")
            do {
                let file = try SafeTensorsFile(path: path)
                for name in file.names {
                    guard let info = file.info(name) else {
                        #expect(file.dtypeName(name) != nil)
                        continue
                    }
                    let values = try file.floats(name, shape: info.shape)
                    #expect(values.count == info.shape.reduce(1, *))
                }
                successes += 1
            } catch let e as DiffusionError {
                #expect(e.code == .invalidFile || e.code == .unsupported, "\(e.code): \(e.message)")
                #expect(e.message.contains(path))
                failures += 1
            }
        }
        #expect(failures > 2000)
        #expect(successes > 0)
    }
}
