#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// A strict RFC 8259 JSON parser for untrusted bytes (safetensors headers, config.json).
//
// - The input must be one JSON value with optional whitespace around it; nothing else.
// - Strings must be valid UTF-8 (no overlong forms, no encoded surrogates, nothing above
//   U+10FFFF, no truncated sequences); control characters must be escaped; `\u` escapes must
//   form valid scalars (a high surrogate must be followed by a `\u` low surrogate).
// - Numbers follow the grammar exactly (no leading zeros, no `+`, no `.5`, no `1.`, no NaN) and
//   must be finite as Double.
// - Nesting deeper than `JSONValue.maxDepth` is refused before it can exhaust the stack.
// - Config files only (`pythonConstants`): the bare words Infinity, -Infinity and NaN that
//   Python's json.dumps writes (diffusers saves DPM-Solver's lambda_min_clipped as -Infinity).
// - Duplicate object keys are kept, in file order; the caller decides what they mean.
// Errors are `DiffusionError(.invalidFile, "invalid JSON at byte N: <what>")`.

extension JSONValue {
    /// Arrays and objects nested deeper than this are refused.
    public static let maxDepth = 256

    /// Parses one JSON document from raw bytes (which must be UTF-8). `pythonConstants` also
    /// accepts Python's Infinity, -Infinity and NaN (for config files written by json.dumps).
    public static func parse(_ bytes: UnsafeRawBufferPointer, pythonConstants: Bool = false) throws -> JSONValue {
        guard let base = bytes.baseAddress, bytes.count > 0 else {
            throw DiffusionError(.invalidFile, "invalid JSON at byte 0: empty input")
        }
        var parser = JSONParser(base.assumingMemoryBound(to: UInt8.self), count: bytes.count)
        parser.pythonConstants = pythonConstants
        return try parser.parseDocument()
    }

    /// Parses one JSON document from text.
    public static func parse(_ text: String, pythonConstants: Bool = false) throws -> JSONValue {
        var copy = text
        return try copy.withUTF8 { try parse(UnsafeRawBufferPointer($0), pythonConstants: pythonConstants) }
    }
}

/// Validation of UTF-8 byte sequences, shared by the JSON parser and the safetensors reader.
enum UTF8Check {
    /// The length of the well-formed UTF-8 sequence starting at `p[i]` (1...4), or nil with a
    /// reason if it is malformed. `i < n` is required.
    @inline(__always)
    static func sequenceLength(_ p: UnsafePointer<UInt8>, _ i: Int, _ n: Int) -> (Int, String?) {
        let b0 = p[i]
        if b0 < 0x80 { return (1, nil) }
        // Unicode Table 3-7: well-formed UTF-8 byte sequences.
        var len = 0
        var lo: UInt8 = 0x80, hi: UInt8 = 0xBF
        switch b0 {
        case 0xC2...0xDF: len = 2
        case 0xE0: len = 3; lo = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: len = 3
        case 0xED: len = 3; hi = 0x9F
        case 0xF0: len = 4; lo = 0x90
        case 0xF1...0xF3: len = 4
        case 0xF4: len = 4; hi = 0x8F
        case 0x80...0xBF: return (0, "invalid UTF-8 (unexpected continuation byte)")
        case 0xC0, 0xC1: return (0, "invalid UTF-8 (overlong encoding)")
        default: return (0, "invalid UTF-8 (byte 0x\(String(b0, radix: 16, uppercase: true)) cannot start a sequence)")
        }
        if i + len > n { return (0, "invalid UTF-8 (truncated sequence)") }
        let b1 = p[i + 1]
        if b1 < lo || b1 > hi {
            if b1 < 0x80 || b1 > 0xBF { return (0, "invalid UTF-8 (truncated sequence)") }
            if b0 == 0xED { return (0, "invalid UTF-8 (encoded surrogate)") }
            if b0 == 0xF4 { return (0, "invalid UTF-8 (code point above U+10FFFF)") }
            return (0, "invalid UTF-8 (overlong encoding)")
        }
        var k = 2
        while k < len {
            let b = p[i + k]
            if b < 0x80 || b > 0xBF { return (0, "invalid UTF-8 (truncated sequence)") }
            k += 1
        }
        return (len, nil)
    }

    /// The offset and reason of the first malformed sequence in `p[0..<n]`, or nil if all valid.
    static func firstError(_ p: UnsafePointer<UInt8>, count n: Int) -> (Int, String)? {
        var i = 0
        while i < n {
            if p[i] < 0x80 { i += 1; continue }
            let (len, err) = sequenceLength(p, i, n)
            if let err { return (i, err) }
            i += len
        }
        return nil
    }
}

struct JSONParser {
    private let p: UnsafePointer<UInt8>
    private let n: Int
    private var i = 0
    private var depth = 0
    private var scratch: [UInt8] = []
    private var numberBuffer: [CChar] = []
    var pythonConstants = false

    init(_ p: UnsafePointer<UInt8>, count: Int) {
        self.p = p
        self.n = count
    }

    private func fail(_ what: String, at pos: Int? = nil) -> DiffusionError {
        DiffusionError(.invalidFile, "invalid JSON at byte \(pos ?? i): \(what)")
    }

    private func describe(_ b: UInt8) -> String {
        if b >= 0x21 && b < 0x7F { return "'\(Character(Unicode.Scalar(b)))'" }
        return "byte 0x" + (b < 16 ? "0" : "") + String(b, radix: 16, uppercase: true)
    }

    @inline(__always)
    private mutating func skipWhitespace() {
        while i < n {
            let b = p[i]
            if b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 { i += 1 } else { break }
        }
    }

    mutating func parseDocument() throws -> JSONValue {
        skipWhitespace()
        let v = try parseValue()
        skipWhitespace()
        if i < n { throw fail("unexpected \(describe(p[i])) after the document") }
        return v
    }

    private mutating func parseValue() throws -> JSONValue {
        guard i < n else { throw fail("unexpected end of input, expected a value") }
        switch p[i] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "I") where pythonConstants: try literal("Infinity"); return .number(.infinity)
        case UInt8(ascii: "N") where pythonConstants: try literal("NaN"); return .number(.nan)
        case UInt8(ascii: "-") where pythonConstants && i + 1 < n && p[i + 1] == UInt8(ascii: "I"):
            i += 1
            try literal("Infinity")
            return .number(-.infinity)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        case let b: throw fail("unexpected \(describe(b)), expected a value")
        }
    }

    private mutating func literal(_ word: StaticString) throws {
        let len = word.utf8CodeUnitCount
        let w = word.utf8Start
        for k in 0..<len {
            if i + k >= n { throw fail("unexpected end of input in literal '\(word)'", at: i + k) }
            if p[i + k] != w[k] { throw fail("invalid literal (expected '\(word)')", at: i + k) }
        }
        i += len
    }

    private mutating func enter() throws {
        depth += 1
        if depth > JSONValue.maxDepth { throw fail("nesting deeper than \(JSONValue.maxDepth) levels") }
    }

    private mutating func parseArray() throws -> JSONValue {
        try enter()
        i += 1  // [
        var items: [JSONValue] = []
        skipWhitespace()
        if i < n && p[i] == UInt8(ascii: "]") { i += 1; depth -= 1; return .array(items) }
        while true {
            skipWhitespace()
            items.append(try parseValue())
            skipWhitespace()
            guard i < n else { throw fail("unexpected end of input in array") }
            let b = p[i]
            i += 1
            if b == UInt8(ascii: ",") {
                skipWhitespace()
                if i < n && p[i] == UInt8(ascii: "]") { throw fail("trailing comma in array") }
                continue
            }
            if b == UInt8(ascii: "]") { break }
            throw fail("unexpected \(describe(b)) in array, expected ',' or ']'", at: i - 1)
        }
        depth -= 1
        return .array(items)
    }

    private mutating func parseObject() throws -> JSONValue {
        try enter()
        i += 1  // {
        var members: [(String, JSONValue)] = []
        skipWhitespace()
        if i < n && p[i] == UInt8(ascii: "}") { i += 1; depth -= 1; return .object(members) }
        while true {
            skipWhitespace()
            guard i < n else { throw fail("unexpected end of input in object") }
            guard p[i] == UInt8(ascii: "\"") else {
                throw fail("unexpected \(describe(p[i])) in object, expected a string key")
            }
            let key = try parseString()
            skipWhitespace()
            guard i < n else { throw fail("unexpected end of input in object") }
            guard p[i] == UInt8(ascii: ":") else {
                throw fail("unexpected \(describe(p[i])) after object key, expected ':'")
            }
            i += 1
            skipWhitespace()
            let value = try parseValue()
            members.append((key, value))
            skipWhitespace()
            guard i < n else { throw fail("unexpected end of input in object") }
            let b = p[i]
            i += 1
            if b == UInt8(ascii: ",") {
                skipWhitespace()
                if i < n && p[i] == UInt8(ascii: "}") { throw fail("trailing comma in object") }
                continue
            }
            if b == UInt8(ascii: "}") { break }
            throw fail("unexpected \(describe(b)) in object, expected ',' or '}'", at: i - 1)
        }
        depth -= 1
        return .object(members)
    }

    @inline(__always)
    private static func hexValue(_ b: UInt8) -> UInt32? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(b - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt32(b - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt32(b - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }

    /// Reads the 4 hex digits of a `\u` escape whose backslash is at `i`.
    private mutating func hex4() throws -> UInt32 {
        // p[i] == '\\', p[i+1] == 'u'
        var v: UInt32 = 0
        for k in 2..<6 {
            guard i + k < n else { throw fail("unexpected end of input in \\u escape", at: i + k) }
            guard let h = JSONParser.hexValue(p[i + k]) else {
                throw fail("invalid hex digit in \\u escape", at: i + k)
            }
            v = v << 4 | h
        }
        i += 6
        return v
    }

    private mutating func parseString() throws -> String {
        let start = i
        i += 1  // opening quote
        // Fast path: no escapes, so the string is a slice of the input.
        let contentStart = i
        while i < n {
            let b = p[i]
            if b == UInt8(ascii: "\"") {
                let s = String(decoding: UnsafeBufferPointer(start: p + contentStart, count: i - contentStart), as: UTF8.self)
                i += 1
                return s
            }
            if b == UInt8(ascii: "\\") { break }
            if b < 0x20 { throw fail("unescaped control character \(describe(b)) in string") }
            if b < 0x80 { i += 1; continue }
            let (len, err) = UTF8Check.sequenceLength(p, i, n)
            if let err { throw fail(err) }
            i += len
        }
        if i >= n { throw fail("unterminated string", at: start) }

        // Slow path: escapes present; build the bytes.
        scratch.removeAll(keepingCapacity: true)
        scratch.append(contentsOf: UnsafeBufferPointer(start: p + contentStart, count: i - contentStart))
        while i < n {
            let b = p[i]
            if b == UInt8(ascii: "\"") {
                i += 1
                return String(decoding: scratch, as: UTF8.self)
            }
            if b == UInt8(ascii: "\\") {
                guard i + 1 < n else { throw fail("unexpected end of input in escape") }
                let e = p[i + 1]
                switch e {
                case UInt8(ascii: "\""): scratch.append(0x22); i += 2
                case UInt8(ascii: "\\"): scratch.append(0x5C); i += 2
                case UInt8(ascii: "/"): scratch.append(0x2F); i += 2
                case UInt8(ascii: "b"): scratch.append(0x08); i += 2
                case UInt8(ascii: "f"): scratch.append(0x0C); i += 2
                case UInt8(ascii: "n"): scratch.append(0x0A); i += 2
                case UInt8(ascii: "r"): scratch.append(0x0D); i += 2
                case UInt8(ascii: "t"): scratch.append(0x09); i += 2
                case UInt8(ascii: "u"):
                    let escStart = i
                    var scalar = try hex4()
                    if scalar >= 0xDC00 && scalar <= 0xDFFF {
                        throw fail("lone low surrogate \\u\(String(scalar, radix: 16, uppercase: true)) in string", at: escStart)
                    }
                    if scalar >= 0xD800 && scalar <= 0xDBFF {
                        guard i + 1 < n, p[i] == UInt8(ascii: "\\"), p[i + 1] == UInt8(ascii: "u") else {
                            throw fail("high surrogate \\u\(String(scalar, radix: 16, uppercase: true)) not followed by a low surrogate escape", at: escStart)
                        }
                        let lowStart = i
                        let low = try hex4()
                        guard low >= 0xDC00 && low <= 0xDFFF else {
                            throw fail("high surrogate followed by \\u\(String(low, radix: 16, uppercase: true)), not a low surrogate", at: lowStart)
                        }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    appendUTF8(scalar)
                default:
                    throw fail("invalid escape \\\(describe(e))", at: i)
                }
                continue
            }
            if b < 0x20 { throw fail("unescaped control character \(describe(b)) in string") }
            if b < 0x80 { scratch.append(b); i += 1; continue }
            let (len, err) = UTF8Check.sequenceLength(p, i, n)
            if let err { throw fail(err) }
            scratch.append(contentsOf: UnsafeBufferPointer(start: p + i, count: len))
            i += len
        }
        throw fail("unterminated string", at: start)
    }

    private mutating func appendUTF8(_ v: UInt32) {
        if v < 0x80 {
            scratch.append(UInt8(v))
        } else if v < 0x800 {
            scratch.append(UInt8(0xC0 | (v >> 6)))
            scratch.append(UInt8(0x80 | (v & 0x3F)))
        } else if v < 0x10000 {
            scratch.append(UInt8(0xE0 | (v >> 12)))
            scratch.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
            scratch.append(UInt8(0x80 | (v & 0x3F)))
        } else {
            scratch.append(UInt8(0xF0 | (v >> 18)))
            scratch.append(UInt8(0x80 | ((v >> 12) & 0x3F)))
            scratch.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
            scratch.append(UInt8(0x80 | (v & 0x3F)))
        }
    }

    @inline(__always)
    private func isDigit(_ k: Int) -> Bool {
        k < n && p[k] >= UInt8(ascii: "0") && p[k] <= UInt8(ascii: "9")
    }

    private mutating func parseNumber() throws -> Double {
        let start = i
        var k = i
        if p[k] == UInt8(ascii: "-") { k += 1 }
        guard isDigit(k) else {
            if k >= n { throw fail("unexpected end of input in number", at: k) }
            throw fail("invalid number (expected a digit after '-')", at: k)
        }
        if p[k] == UInt8(ascii: "0") {
            k += 1
            if isDigit(k) { throw fail("invalid number (leading zero)", at: start) }
        } else {
            while isDigit(k) { k += 1 }
        }
        if k < n && p[k] == UInt8(ascii: ".") {
            k += 1
            guard isDigit(k) else { throw fail("invalid number (expected a digit after '.')", at: k) }
            while isDigit(k) { k += 1 }
        }
        if k < n && (p[k] == UInt8(ascii: "e") || p[k] == UInt8(ascii: "E")) {
            k += 1
            if k < n && (p[k] == UInt8(ascii: "+") || p[k] == UInt8(ascii: "-")) { k += 1 }
            guard isDigit(k) else { throw fail("invalid number (expected a digit in the exponent)", at: k) }
            while isDigit(k) { k += 1 }
        }
        let len = k - start
        // strtod on a NUL-terminated copy of exactly the validated token, in the "C" locale so a
        // host program's LC_NUMERIC (e.g. a decimal comma) cannot change the result.
        numberBuffer.removeAll(keepingCapacity: true)
        numberBuffer.reserveCapacity(len + 1)
        for j in start..<k { numberBuffer.append(CChar(bitPattern: p[j])) }
        numberBuffer.append(0)
        let value: Double = numberBuffer.withUnsafeMutableBufferPointer { buf in
            let previous = JSONParser.cLocale.map { uselocale($0) }
            defer { if let previous { uselocale(previous) } }
            var end: UnsafeMutablePointer<CChar>? = nil
            let d = strtod(buf.baseAddress!, &end)
            if let end, end - buf.baseAddress! != len { return .nan }
            return d
        }
        guard value.isFinite else {
            if value.isNaN { throw fail("invalid number", at: start) }
            throw fail("number out of range", at: start)
        }
        i = k
        return value
    }

    /// A "C" numeric locale, made once; nil if the C library cannot make one (then the process
    /// locale is used, which is "C" unless the host program changed it).
    private static let cLocale: locale_t? = newlocale(Int32(1 << LC_NUMERIC), "C", nil)
}
