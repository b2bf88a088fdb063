/// Typed access to a config object; type errors name the key and the value found.
struct ConfigReader {
    let json: JSONValue
    init(_ json: JSONValue) { self.json = json }

    func unsupported(_ key: String, _ value: String) -> DiffusionError {
        DiffusionError(.unsupported, "\(key) \"\(value)\" is not supported")
    }

    private func wrongType(_ key: String, _ v: JSONValue, _ expected: String) -> DiffusionError {
        DiffusionError(.invalidFile, "\(key) must be \(expected), got \(v.serialized)")
    }

    func int(_ key: String, _ def: Int, min lo: Int) throws -> Int {
        guard let v = json[key], !v.isNull else { return def }
        guard let i = v.intValue else { throw wrongType(key, v, "an integer") }
        guard i >= lo else { throw DiffusionError(.invalidFile, "\(key) must be at least \(lo), got \(i)") }
        return i
    }

    func optionalInt(_ key: String, min lo: Int, default def: Int? = nil) throws -> Int? {
        guard let v = json[key] else { return def }
        if v.isNull { return nil }
        guard let i = v.intValue else { throw wrongType(key, v, "an integer or null") }
        guard i >= lo else { throw DiffusionError(.invalidFile, "\(key) must be at least \(lo), got \(i)") }
        return i
    }

    func double(_ key: String, _ def: Double) throws -> Double {
        guard let v = json[key], !v.isNull else { return def }
        guard let d = v.doubleValue, d.isFinite else { throw wrongType(key, v, "a number") }
        return d
    }

    func bool(_ key: String, _ def: Bool) throws -> Bool {
        guard let v = json[key], !v.isNull else { return def }
        guard let b = v.boolValue else { throw wrongType(key, v, "true or false") }
        return b
    }

    func string(_ key: String, _ def: String) throws -> String {
        guard let v = json[key], !v.isNull else { return def }
        guard let s = v.stringValue else { throw wrongType(key, v, "a string") }
        return s
    }

    func optionalString(_ key: String, _ def: String?) throws -> String? {
        guard let v = json[key] else { return def }
        if v.isNull { return nil }
        guard let s = v.stringValue else { throw wrongType(key, v, "a string or null") }
        return s
    }

    func strings(_ key: String, _ def: [String]) throws -> [String] {
        guard let v = json[key], !v.isNull else { return def }
        guard let a = v.arrayValue else { throw wrongType(key, v, "a list of strings") }
        return try a.map { e in
            guard let s = e.stringValue else { throw wrongType(key, v, "a list of strings") }
            return s
        }
    }

    func ints(_ key: String, _ def: [Int]) throws -> [Int] {
        guard let v = json[key], !v.isNull else { return def }
        guard let a = v.arrayValue else { throw wrongType(key, v, "a list of integers") }
        return try a.map { e in
            guard let i = e.intValue else { throw wrongType(key, v, "a list of integers") }
            return i
        }
    }
}

extension ConfigReader {
    /// `sample_size`: an integer or [height, width], each in 1...16384 (nil when absent or null).
    func sampleSize() throws -> (height: Int, width: Int)? {
        guard let v = json["sample_size"], !v.isNull else { return nil }
        let sides: [Int]?
        if let s = v.intValue { sides = [s, s] }
        else if let a = v.arrayValue, a.count == 2, let h = a[0].intValue, let w = a[1].intValue { sides = [h, w] }
        else { sides = nil }
        guard let sides, sides.allSatisfy({ (1...16384).contains($0) }) else {
            throw DiffusionError(.invalidFile, "sample_size must be an integer or [height, width] in 1...16384, got \(v.serialized)")
        }
        return (sides[0], sides[1])
    }

    /// An integer or a list of `count` integers (diffusers' per-block settings).
    func intOrList(_ key: String, _ def: Int, count: Int, min lo: Int) throws -> [Int] {
        guard let v = json[key], !v.isNull else { return [Int](repeating: def, count: count) }
        let values: [Int]
        if let i = v.intValue { values = [Int](repeating: i, count: count) }
        else if let a = v.arrayValue {
            values = try a.map { e in
                guard let i = e.intValue else { throw DiffusionError(.invalidFile, "\(key) must be an integer or a list of integers, got \(v.serialized)") }
                return i
            }
            guard values.count == count else {
                throw DiffusionError(.invalidFile, "\(key) has \(values.count) entries, expected one per block (\(count))")
            }
        } else { throw DiffusionError(.invalidFile, "\(key) must be an integer or a list of integers, got \(v.serialized)") }
        for i in values where i < lo { throw DiffusionError(.invalidFile, "\(key) entries must be at least \(lo), got \(i)") }
        return values
    }

    /// Refuses a key present with a value other than null.
    func requireNull(_ key: String) throws {
        if let v = json[key], !v.isNull { throw DiffusionError(.unsupported, "\(key) \(v.serialized) is not supported (only null)") }
    }

    /// Refuses a key that is true (or a list holding true).
    func requireFalse(_ key: String) throws {
        guard let v = json[key], !v.isNull else { return }
        let ok = v.boolValue == false || (v.arrayValue?.allSatisfy { $0.boolValue == false } ?? false)
        if !ok { throw DiffusionError(.unsupported, "\(key) \(v.serialized) is not supported (only false)") }
    }

    /// Refuses a key present with another value than `value`.
    func requireDefault(_ key: String, _ value: String) throws {
        if let v = json[key], !v.isNull, v.stringValue != value {
            throw DiffusionError(.unsupported, "\(key) \(v.serialized) is not supported (only \"\(value)\")")
        }
    }

    func requireDefault(_ key: String, _ value: Double) throws {
        if let v = json[key], !v.isNull, v.doubleValue != value {
            throw DiffusionError(.unsupported, "\(key) \(v.serialized) is not supported (only \(value))")
        }
    }
}
