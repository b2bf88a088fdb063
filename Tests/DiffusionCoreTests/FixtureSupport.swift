import Foundation
import Testing
import DiffusionCore

/// Expects `body` to throw a DiffusionError with `code` whose message contains every phrase.
func expectError(_ code: DiffusionError.Code, _ phrases: [String], _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected \(code) mentioning \(phrases)")
    } catch let e as DiffusionError {
        #expect(e.code == code, "\(e.message)")
        for p in phrases { #expect(e.message.contains(p), "message \"\(e.message)\" lacks \"\(p)\"") }
    } catch {
        Issue.record("unexpected error \(error)")
    }
}

/// Reads the reference fixtures written by tools/make_fixtures.py (diffusers + PyTorch, CPU, f32).
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures")

    static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

    /// The entries of a fixture folder; a missing or empty folder is a failure, never zero cases.
    static func cases(_ folder: String) -> [String] {
        let dir = root.appendingPathComponent(folder)
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir.path), !names.isEmpty else {
            fatalError("fixture folder \(dir.path) is missing or empty (regenerate it with the tools/ scripts)")
        }
        return names.sorted()
    }

    static func json(_ relative: String) throws -> [String: Any] {
        let data = try Data(contentsOf: root.appendingPathComponent(relative))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    /// A test-side safetensors reader (F32, F16 and I64 — the library itself refuses I64).
    static func tensors(_ relative: String) throws -> [String: (shape: [Int], values: [Double])] {
        let data = try Data(contentsOf: root.appendingPathComponent(relative))
        let n = data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + Int(n)))) as! [String: Any]
        let base = 8 + Int(n)
        var out: [String: (shape: [Int], values: [Double])] = [:]
        for (name, entry) in header where name != "__metadata__" {
            let e = entry as! [String: Any]
            let shape = (e["shape"] as! [NSNumber]).map { $0.intValue }
            let offsets = (e["data_offsets"] as! [NSNumber]).map { $0.intValue }
            let bytes = data.subdata(in: (base + offsets[0])..<(base + offsets[1]))
            let values: [Double] = bytes.withUnsafeBytes { raw in
                switch e["dtype"] as! String {
                case "F32": return raw.bindMemory(to: Float.self).map { Double($0) }
                case "I64": return raw.bindMemory(to: Int64.self).map { Double($0) }
                case "F16": return raw.bindMemory(to: UInt16.self).map { Double(DType.f16ToF32(bits: $0)) }
                default: fatalError("fixture dtype \(e["dtype"]!)")
                }
            }
            out[name] = (shape, values)
        }
        return out
    }

    static func maxAbsDiff(_ a: [Float], _ b: [Double]) -> Double {
        precondition(a.count == b.count, "size mismatch \(a.count) vs \(b.count)")
        var m = 0.0
        for i in a.indices {
            let d = abs(Double(a[i]) - b[i])
            if d.isNaN { return .infinity }  // Swift's max skips NaN: a NaN must fail the comparison
            m = max(m, d)
        }
        return m
    }
}
