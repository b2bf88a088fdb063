#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reading and validating a tokenizer folder's vocab.json and merges.txt.
enum VocabularyFiles {
    /// CLIP's vocab.json is 1.6 MB and merges.txt 0.5 MB; anything this big is not a tokenizer file.
    static let sizeLimit = 64 << 20

    /// The bytes of a regular file. Anything else is refused before it is opened: `open` on a FIFO
    /// blocks until a writer appears, and FileIO.read only checks the type after opening.
    static func read(_ path: String, limit: Int = sizeLimit) throws -> [UInt8] {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw DiffusionError(.io, "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw DiffusionError(.io, "\(path) is not a regular file") }
        return try FileIO.read(path, limit: limit)
    }

    /// A JSON document from a regular file; parse errors name the file.
    static func readJSON(_ path: String) throws -> JSONValue {
        let bytes = try read(path)
        do {
            return try bytes.withUnsafeBytes { try JSONValue.parse($0) }
        } catch let e as DiffusionError {
            throw e.context(path)
        }
    }

    /// vocab.json: one object of token -> id, the ids exactly 0..<count (each once), no token twice.
    static func readVocabulary(_ path: String) throws -> [String: Int] {
        guard case let .object(members) = try readJSON(path) else {
            throw DiffusionError(.invalidFile, "\(path): expected a JSON object of token -> id")
        }
        guard !members.isEmpty else { throw DiffusionError(.invalidFile, "\(path): the vocabulary is empty") }
        var vocabulary = [String: Int](minimumCapacity: members.count)
        var seen = [Bool](repeating: false, count: members.count)
        for (token, value) in members {
            guard let id = value.intValue else {
                throw DiffusionError(.invalidFile, "\(path): the id of \(quoted(token)) is \(brief(value)), not an integer")
            }
            guard id >= 0 && id < members.count else {
                throw DiffusionError(.invalidFile, "\(path): the id \(id) of \(quoted(token)) is outside 0..<\(members.count) (the number of tokens)")
            }
            guard !seen[id] else { throw DiffusionError(.invalidFile, "\(path): the id \(id) is given to two tokens (one is \(quoted(token)))") }
            seen[id] = true
            guard vocabulary.updateValue(id, forKey: token) == nil else {
                throw DiffusionError(.invalidFile, "\(path): the token \(quoted(token)) appears twice")
            }
        }
        return vocabulary
    }

    /// merges.txt as tokenizers reads it: lines split at "\n" (a trailing "\r" dropped), lines that
    /// start with "#version" skipped, every other line exactly two tokens separated by one space;
    /// both tokens and their concatenation must be in the vocabulary. A pair listed twice keeps its
    /// later rank, as tokenizers' map does.
    static func readMerges(_ path: String, vocabulary: [String: Int]) throws -> [UInt64: BytePairEncoder.Merge] {
        let bytes = try read(path)
        guard String(validating: bytes, as: UTF8.self) != nil else {
            throw DiffusionError(.invalidFile, "\(path): not valid UTF-8")
        }
        var lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }  // the newline that ends the last line
        var merges = [UInt64: BytePairEncoder.Merge](minimumCapacity: lines.count)
        var rank: Int32 = 0
        for (index, rawLine) in lines.enumerated() {
            let line = rawLine.last == 0x0D ? rawLine.dropLast() : rawLine
            if line.starts(with: "#version".utf8) { continue }
            guard let space = line.firstIndex(of: 0x20), !line[(space + 1)...].contains(0x20) else {
                throw DiffusionError(.invalidFile, "\(path) line \(index + 1): expected two tokens separated by one space, got \(quoted(String(decoding: line, as: UTF8.self)))")
            }
            let a = String(decoding: line[..<space], as: UTF8.self), b = String(decoding: line[(space + 1)...], as: UTF8.self)
            guard let left = vocabulary[a], let right = vocabulary[b], let merged = vocabulary[a + b] else {
                let missing = vocabulary[a] == nil ? a : vocabulary[b] == nil ? b : a + b
                throw DiffusionError(.invalidFile, "\(path) line \(index + 1): the token \(quoted(missing)) is not in vocab.json")
            }
            // Ids are below the token count and ranks below the line count, which a 64 MB file keeps far below Int32.max.
            merges[BytePairEncoder.pairKey(Int32(left), Int32(right))] = .init(rank: rank, id: Int32(merged))
            rank += 1
        }
        return merges
    }

    /// A token for a message: quoted, control characters escaped, long ones cut.
    static func quoted(_ s: String) -> String {
        var out = "\""
        for (i, u) in s.unicodeScalars.enumerated() {
            if i == 64 { out += "…"; break }
            if u.value < 0x20 || u.value == 0x7F || u == "\"" || u == "\\" {
                out += u == "\"" ? "\\\"" : u == "\\" ? "\\\\" : "\\u{\(String(u.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }

    /// A JSON value for a message, cut to a readable length.
    static func brief(_ value: JSONValue) -> String {
        let text = value.serialized
        return text.count <= 80 ? text : String(text.prefix(80)) + "…"
    }
}
