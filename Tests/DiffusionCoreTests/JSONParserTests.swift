import Testing
import DiffusionCore

/// Parses `bytes` and expects an `.invalidFile` error whose message contains `phrase`.
private func expectInvalid(_ bytes: [UInt8], _ phrase: String, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        let v = try bytes.withUnsafeBytes { try JSONValue.parse($0) }
        Issue.record("expected an error containing '\(phrase)', parsed \(v.serialized)", sourceLocation: sourceLocation)
    } catch let e as DiffusionError {
        #expect(e.code == .invalidFile, "wrong code for: \(e.message)", sourceLocation: sourceLocation)
        #expect(e.message.contains("invalid JSON at byte"), "\(e.message)", sourceLocation: sourceLocation)
        #expect(e.message.contains(phrase), "'\(e.message)' lacks '\(phrase)'", sourceLocation: sourceLocation)
    } catch {
        Issue.record("non-DiffusionError \(error)", sourceLocation: sourceLocation)
    }
}

private func expectInvalid(_ text: String, _ phrase: String, sourceLocation: SourceLocation = #_sourceLocation) {
    expectInvalid(Array(text.utf8), phrase, sourceLocation: sourceLocation)
}

@Suite struct JSONParserTests {
    @Test func nestedDocument() throws {
        let v = try JSONValue.parse(#" { "a" : [1, {"b": null, "c": [true, false]}], "d": "x", "e": {}, "f": [] } "#)
        #expect(v == .object([
            ("a", .array([.number(1), .object([("b", .null), ("c", .array([.bool(true), .bool(false)]))])])),
            ("d", .string("x")),
            ("e", .object([])),
            ("f", .array([])),
        ]))
        #expect(v["a"]?.arrayValue?[1]["c"]?.arrayValue?.count == 2)
    }

    @Test func topLevelScalarsAndWhitespace() throws {
        #expect(try JSONValue.parse("1") == .number(1))
        #expect(try JSONValue.parse(" \t\r\n\"x\"\n ") == .string("x"))
        #expect(try JSONValue.parse("null") == .null)
        #expect(try JSONValue.parse("true") == .bool(true))
        #expect(try JSONValue.parse("\"\"") == .string(""))
    }

    @Test func escapes() throws {
        let v = try JSONValue.parse(#""q\"b\\s\/\b\f\n\r\t\u0041\u00e9\u20AC\uD83D\uDE00\u0000z""#)
        #expect(v == .string("q\"b\\s/\u{8}\u{c}\n\r\tAé€😀\u{0}z"))
    }

    @Test func rawUnicode() throws {
        #expect(try JSONValue.parse("\"é€😀 \u{10FFFF}\"") == .string("é€😀 \u{10FFFF}"))
        #expect(try JSONValue.parse("{\"ключ\": \"значение\"}")["ключ"] == .string("значение"))
    }

    @Test func numbers() throws {
        let cases: [(String, Double)] = [
            ("0", 0), ("-0", -0.0), ("1e-7", 1e-7), ("1E+2", 100), ("1e2", 100), ("0.5", 0.5),
            ("-12.5e3", -12500), ("123456789012", 123456789012), ("1.7976931348623157e308", .greatestFiniteMagnitude),
            ("4.9406564584124654e-324", .leastNonzeroMagnitude), ("0e0", 0), ("-0.0", -0.0), ("10", 10), ("0.1", 0.1), ("1e-400", 0),
        ]
        for (text, expected) in cases {
            let v = try JSONValue.parse(text)
            #expect(v.doubleValue == expected, "\(text)")
            #expect(v.doubleValue?.sign == expected.sign, "sign of \(text)")
        }
    }

    @Test func duplicateKeysAreKept() throws {
        let v = try JSONValue.parse(#"{"a": 1, "a": 2}"#)
        #expect(v.objectValue?.count == 2)
        #expect(v["a"] == .number(2))
    }

    @Test func roundTripThroughSerialized() throws {
        let text = #"{"a":[1,-2.5,"x\ny\u0001",null,true],"b":{"c":{}}}"#
        let v = try JSONValue.parse(text)
        #expect(try JSONValue.parse(v.serialized) == v)
    }

    @Test func exactDepthLimit() throws {
        let ok = String(repeating: "[", count: JSONValue.maxDepth) + String(repeating: "]", count: JSONValue.maxDepth)
        _ = try JSONValue.parse(ok)
        let d = JSONValue.maxDepth + 1
        expectInvalid(String(repeating: "[", count: d) + String(repeating: "]", count: d), "nesting deeper")
    }

    @Test func depthBombs() {
        expectInvalid(String(repeating: "[", count: 100_000), "nesting deeper")
        expectInvalid(String(repeating: "{\"a\":", count: 100_000), "nesting deeper")
        expectInvalid(String(repeating: "[{\"k\":", count: 50_000), "nesting deeper")
    }

    @Test func structuralErrors() {
        expectInvalid("[1,2,]", "trailing comma")
        expectInvalid("[1,2,]", "at byte 5")
        expectInvalid(#"{"a":1,}"#, "trailing comma")
        expectInvalid("[1 2]", "expected ',' or ']'")
        expectInvalid(#"{"a" 1}"#, "expected ':'")
        expectInvalid(#"{"a":1 "b":2}"#, "expected ',' or '}'")
        expectInvalid("{'a':1}", "expected a string key")
        expectInvalid("{1:1}", "expected a string key")
        expectInvalid("[,1]", "expected a value")
        expectInvalid("{} x", "after the document")
        expectInvalid("1 2", "after the document")
        expectInvalid("[] // comment", "after the document")
        expectInvalid("nul", "end of input")
        expectInvalid("nulL", "invalid literal")
        expectInvalid("True", "expected a value")
        expectInvalid("NaN", "expected a value")
        expectInvalid("Infinity", "expected a value")
        expectInvalid("", "empty input")
        expectInvalid("   ", "end of input")
        expectInvalid([0xEF, 0xBB, 0xBF, 0x31], "expected a value")  // BOM
    }

    @Test func truncatedInput() {
        expectInvalid(#"{"a": [1, 2"#, "end of input")
        expectInvalid(#"{"a": "#, "end of input")
        expectInvalid(#"{"a""#, "end of input")
        expectInvalid("{", "end of input")
        expectInvalid("[", "end of input")
        expectInvalid(#""abc"#, "unterminated string")
        expectInvalid(#""ab\"#, "end of input")
        expectInvalid(#""ab\u00"#, "end of input")
        expectInvalid("tru", "end of input")
        expectInvalid("-", "end of input")
        // Every proper prefix of a valid document fails cleanly.
        let doc = Array(#"{"a": [1.5e3, -0, "x\u00e9\uD83D\uDE00é", true, false, null], "b": {}}"#.utf8)
        for k in 0..<doc.count {
            do {
                _ = try Array(doc[0..<k]).withUnsafeBytes { try JSONValue.parse($0) }
                Issue.record("prefix of length \(k) parsed")
            } catch let e as DiffusionError {
                #expect(e.code == .invalidFile)
            } catch {
                Issue.record("non-DiffusionError \(error)")
            }
        }
    }

    @Test func badNumbers() {
        expectInvalid("01", "leading zero")
        expectInvalid("-01", "leading zero")
        expectInvalid("[00]", "leading zero")
        expectInvalid("1.", "digit after '.'")
        expectInvalid("1.e5", "digit after '.'")
        expectInvalid(".5", "expected a value")
        expectInvalid("+1", "expected a value")
        expectInvalid("-a", "digit after '-'")
        expectInvalid("1e", "exponent")
        expectInvalid("1e+", "exponent")
        expectInvalid("0x10", "after the document")
        expectInvalid("1e400", "out of range")
        expectInvalid("-1e400", "out of range")
    }

    @Test func badStrings() {
        expectInvalid(#""\uD800""#, "high surrogate")
        expectInvalid(#""\uD800x""#, "high surrogate")
        expectInvalid(#""\uDC00""#, "lone low surrogate")
        expectInvalid(#""\uD800\u0041""#, "not a low surrogate")
        expectInvalid(#""\uD800\uD800""#, "not a low surrogate")
        expectInvalid(#""\u12G4""#, "invalid hex digit")
        expectInvalid(#""\x""#, "invalid escape")
        expectInvalid(#""\'""#, "invalid escape")
        expectInvalid("\"a\nb\"", "unescaped control character")
        expectInvalid("\"a\tb\"", "unescaped control character")
        expectInvalid([0x22, 0x00, 0x22], "unescaped control character")
        expectInvalid("\"a\\n\u{1}\"", "unescaped control character")  // after an escape (slow path)
    }

    @Test func invalidUTF8() {
        let q: UInt8 = 0x22
        expectInvalid([q, 0xFF, q], "invalid UTF-8")
        expectInvalid([q, 0x80, q], "unexpected continuation byte")
        expectInvalid([q, 0xC0, 0xAF, q], "overlong")
        expectInvalid([q, 0xC1, 0xBF, q], "overlong")
        expectInvalid([q, 0xE0, 0x80, 0xAF, q], "overlong")
        expectInvalid([q, 0xF0, 0x80, 0x80, 0xAF, q], "overlong")
        expectInvalid([q, 0xED, 0xA0, 0x80, q], "encoded surrogate")
        expectInvalid([q, 0xED, 0xBF, 0xBF, q], "encoded surrogate")
        expectInvalid([q, 0xF4, 0x90, 0x80, 0x80, q], "above U+10FFFF")
        expectInvalid([q, 0xF5, 0x80, 0x80, 0x80, q], "cannot start a sequence")
        expectInvalid([q, 0xE2, 0x82, q], "truncated")
        expectInvalid([q, 0xE2, 0x82], "truncated")
        expectInvalid([q, 0xF0, 0x9F, 0x98], "truncated")
        expectInvalid([q, 0x5C, 0x6E, 0xFF, q], "invalid UTF-8")  // after an escape (slow path)
        // Non-ASCII outside strings is a syntax error.
        expectInvalid([0xC3, 0xA9], "expected a value")
        // Boundary scalars are fine.
        for bytes: [UInt8] in [[0xC2, 0x80], [0xDF, 0xBF], [0xE0, 0xA0, 0x80], [0xED, 0x9F, 0xBF], [0xEE, 0x80, 0x80],
                               [0xEF, 0xBF, 0xBF], [0xF0, 0x90, 0x80, 0x80], [0xF4, 0x8F, 0xBF, 0xBF]] {
            let doc = [q] + bytes + [q]
            #expect((try? doc.withUnsafeBytes { try JSONValue.parse($0) })?.stringValue == String(decoding: bytes, as: UTF8.self))
        }
    }
}
