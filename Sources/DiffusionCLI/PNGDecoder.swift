import DiffusionCore
#if canImport(Glibc)
import Glibc
#endif

/// An 8-bit image, rows top to bottom: gray (channels 1) or RGB (channels 3).
struct DecodedImage {
    let width: Int, height: Int, channels: Int
    let pixels: [UInt8]
}

/// A PNG reader for hostile input: every length and offset is checked and allocations are bounded
/// (a side is at most 16384 pixels; the inflated data must be exactly height x (1 + row bytes)).
/// 8-bit gray, RGB, palette, gray+alpha and RGBA, not interlaced; alpha is dropped and palettes expanded.
/// Errors are DiffusionError(.invalidFile, "<path>: <what is wrong>").
struct PNGDecoder {
    static let maxSide = 16384
    static let maxFileBytes = 1 << 31

    let path: String

    func error(_ what: String) -> DiffusionError { DiffusionError(.invalidFile, "\(path): \(what)") }

    /// Reads and decodes `path`; `accept(width, height)` may refuse the size before anything is inflated.
    static func read(_ path: String, accept: (Int, Int) throws -> Void = { _, _ in }) throws -> DecodedImage {
        guard let f = fopen(path, "rb") else {
            throw DiffusionError(.io, "cannot read \(path): \(String(cString: strerror(errno)))")
        }
        defer { fclose(f) }
        var data: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = fread(&buffer, 1, buffer.count, f)
            if n == 0 { break }
            data += buffer[0..<n]
            guard data.count <= maxFileBytes else { throw PNGDecoder(path: path).error("file is larger than 2 GiB") }
        }
        if ferror(f) != 0 { throw DiffusionError(.io, "cannot read \(path): \(String(cString: strerror(errno)))") }
        return try PNGDecoder(path: path).decode(data, accept: accept)
    }

    func decode(_ data: [UInt8], accept: (Int, Int) throws -> Void) throws -> DecodedImage {
        guard data.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) else {
            throw error("not a PNG file (bad signature)")
        }
        func be32(_ at: Int) -> Int { data[at..<(at + 4)].reduce(0) { $0 << 8 | Int($1) } }
        var width = 0, height = 0, color = -1
        var palette: [UInt8]? = nil, idat: [UInt8] = []
        var pos = 8
        // Chunks: length, type, body, CRC of type + body.
        while true {
            guard data.count - pos >= 12 else { throw error("truncated file (\(pos == data.count ? "no IEND chunk" : "partial chunk header"))") }
            let length = be32(pos)
            let typeBytes = data[(pos + 4)..<(pos + 8)]
            guard typeBytes.allSatisfy({ (65...90).contains($0) || (97...122).contains($0) }) else {
                throw error("invalid chunk type at byte \(pos + 4)")
            }
            let type = String(decoding: typeBytes, as: UTF8.self)
            guard length <= data.count - pos - 12 else {
                throw error("truncated file (\(type) chunk of \(length) bytes, \(data.count - pos - 12) left)")
            }
            let body = (pos + 8)..<(pos + 8 + length)
            guard PNG.crc32(data[(pos + 4)..<body.upperBound]) == be32(body.upperBound) else {
                throw error("CRC mismatch in the \(type) chunk (corrupted file)")
            }
            pos = body.upperBound + 4
            guard color >= 0 || type == "IHDR" else { throw error("the first chunk is \(type), not IHDR") }
            switch type {
            case "IHDR":
                guard color < 0 else { throw error("more than one IHDR chunk") }
                guard length == 13 else { throw error("IHDR chunk of \(length) bytes, not 13") }
                let b = body.lowerBound
                width = be32(b); height = be32(b + 4)
                let depth = Int(data[b + 8]), interlace = data[b + 12]
                color = Int(data[b + 9])
                guard (1...Self.maxSide).contains(width), (1...Self.maxSide).contains(height) else {
                    throw error("image size \(width)x\(height) is outside 1...\(Self.maxSide)")
                }
                guard [0, 2, 3, 4, 6].contains(color) else { throw error("invalid color type \(color)") }
                guard depth == 8 else { throw error("bit depth \(depth) is not supported (only 8-bit PNGs)") }
                guard data[b + 10] == 0, data[b + 11] == 0 else { throw error("unknown compression or filter method") }
                guard interlace != 1 else { throw error("Adam7-interlaced PNGs are not supported (save it non-interlaced)") }
                guard interlace == 0 else { throw error("invalid interlace method \(interlace)") }
                try accept(width, height)
            case "PLTE":
                guard length % 3 == 0, (3...768).contains(length) else { throw error("PLTE chunk of \(length) bytes") }
                palette = Array(data[body])
            case "IDAT":
                idat += data[body]
            case "IEND":
                guard !idat.isEmpty else { throw error("no IDAT chunk") }
                return try image(width, height, color, palette, idat)
            default:
                // Bit 5 of the first letter clear (uppercase) = critical: we must understand it.
                guard typeBytes.first! & 0x20 != 0 else { throw error("unknown critical chunk \(type)") }
            }
        }
    }

    /// Inflates and unfilters the concatenated IDAT data; converts to gray or RGB.
    private func image(_ width: Int, _ height: Int, _ color: Int, _ palette: [UInt8]?, _ idat: [UInt8]) throws -> DecodedImage {
        if color == 3 && palette == nil { throw error("palette image without a PLTE chunk") }
        let bpp = [0: 1, 2: 3, 3: 1, 4: 2, 6: 4][color]!  // bytes per pixel
        let rowBytes = width * bpp
        var inflater = Inflater(path: path, input: idat, size: height * (1 + rowBytes))
        let raw = try inflater.run()
        var img = [UInt8](repeating: 0, count: height * rowBytes)
        for y in 0..<height {
            let filter = raw[y * (rowBytes + 1)], src = y * (rowBytes + 1) + 1, dst = y * rowBytes
            guard filter <= 4 else { throw error("unknown filter type \(filter) in row \(y)") }
            for i in 0..<rowBytes {
                let a = i >= bpp ? img[dst + i - bpp] : 0           // left
                let b = y > 0 ? img[dst + i - rowBytes] : 0         // up
                let c = i >= bpp && y > 0 ? img[dst + i - rowBytes - bpp] : 0  // up-left
                let predictor: UInt8
                switch filter {
                case 0: predictor = 0
                case 1: predictor = a
                case 2: predictor = b
                case 3: predictor = UInt8((Int(a) + Int(b)) / 2)
                default:  // Paeth
                    let p = Int(a) + Int(b) - Int(c), pa = abs(p - Int(a)), pb = abs(p - Int(b)), pc = abs(p - Int(c))
                    predictor = pa <= pb && pa <= pc ? a : (pb <= pc ? b : c)
                }
                img[dst + i] = raw[src + i] &+ predictor
            }
        }
        switch color {
        case 0: return DecodedImage(width: width, height: height, channels: 1, pixels: img)
        case 2: return DecodedImage(width: width, height: height, channels: 3, pixels: img)
        case 4: return DecodedImage(width: width, height: height, channels: 1, pixels: stride(from: 0, to: img.count, by: 2).map { img[$0] })
        case 6: return DecodedImage(width: width, height: height, channels: 3,
                                    pixels: img.indices.filter { $0 % 4 != 3 }.map { img[$0] })
        default:
            let entries = palette!.count / 3
            var rgb = [UInt8](repeating: 0, count: img.count * 3)
            for (i, index) in img.enumerated() {
                guard Int(index) < entries else { throw error("palette index \(index) out of range (\(entries) entries)") }
                for ch in 0..<3 { rgb[i * 3 + ch] = palette![Int(index) * 3 + ch] }
            }
            return DecodedImage(width: width, height: height, channels: 3, pixels: rgb)
        }
    }
}

/// zlib (RFC 1950) + deflate (RFC 1951) decoder after Mark Adler's puff: canonical Huffman codes
/// decoded bit by bit. The output must be exactly `size` bytes; more is an error as soon as it appears.
struct Inflater {
    let path: String, input: [UInt8], size: Int
    var pos = 0, bitBuffer = 0, bitCount = 0
    var out: [UInt8] = []

    init(path: String, input: [UInt8], size: Int) {
        self.path = path; self.input = input; self.size = size
        out.reserveCapacity(min(size, input.count * 1032))  // deflate expands at most ~1032:1
    }

    func error(_ what: String) -> DiffusionError { DiffusionError(.invalidFile, "\(path): \(what)") }

    mutating func run() throws -> [UInt8] {
        let cmf = try bits(8), flg = try bits(8)
        guard cmf & 0x0F == 8, cmf >> 4 <= 7, (cmf << 8 | flg) % 31 == 0, flg & 0x20 == 0 else {
            throw error("bad zlib header in the image data")
        }
        var last = 0
        repeat {
            last = try bits(1)
            switch try bits(2) {
            case 0: try stored()
            case 1: try codes(Self.fixedLiteral, Self.fixedDistance)
            case 2: try dynamic()
            default: throw error("invalid deflate block type 3")
            }
        } while last == 0
        guard out.count == size else { throw error("image data is \(out.count) bytes, expected \(size)") }
        bitBuffer = 0; bitCount = 0  // the Adler-32 starts at the next byte boundary
        var adler = 0
        for _ in 0..<4 {
            let byte = try bits(8)
            adler = adler << 8 | byte
        }
        guard UInt32(adler) == PNG.adler32(out) else { throw error("Adler-32 mismatch in the image data") }
        return out
    }

    /// `n` bits, least significant first.
    mutating func bits(_ n: Int) throws -> Int {
        while bitCount < n {
            guard pos < input.count else { throw error("image data is truncated") }
            bitBuffer |= Int(input[pos]) << bitCount
            pos += 1; bitCount += 8
        }
        let value = bitBuffer & ((1 << n) - 1)
        bitBuffer >>= n; bitCount -= n
        return value
    }

    mutating func emit(_ byte: UInt8) throws {
        guard out.count < size else { throw error("image data is longer than \(size) bytes") }
        out.append(byte)
    }

    mutating func stored() throws {
        bitBuffer = 0; bitCount = 0  // to the byte boundary
        let length = try bits(16), complement = try bits(16)
        guard length == ~complement & 0xFFFF else { throw error("stored block length check failed") }
        guard input.count - pos >= length else { throw error("image data is truncated") }
        guard size - out.count >= length else { throw error("image data is longer than \(size) bytes") }
        out += input[pos..<(pos + length)]
        pos += length
    }

    struct Huffman {
        var counts = [Int](repeating: 0, count: 16)  // codes per length
        var symbols: [Int]                           // symbols ordered by code
        var left = 1                                 // > 0 incomplete, < 0 over-subscribed, 0 complete

        init(_ lengths: [Int]) {
            for l in lengths { counts[l] += 1 }
            for len in 1...15 where left >= 0 { left = left * 2 - counts[len] }
            if counts[0] == lengths.count { left = 0 }  // no codes at all (e.g. no distances)
            var offsets = [Int](repeating: 0, count: 16)
            for len in 1..<15 { offsets[len + 1] = offsets[len] + counts[len] }
            symbols = [Int](repeating: 0, count: lengths.count)
            for (symbol, l) in lengths.enumerated() where l != 0 {
                symbols[offsets[l]] = symbol
                offsets[l] += 1
            }
        }

        /// Complete, or a single one-bit code (deflate allows that one incomplete code).
        var usable: Bool { left == 0 || (left > 0 && counts[1] == 1 && counts[2...].allSatisfy { $0 == 0 }) }
    }

    mutating func decode(_ h: Huffman) throws -> Int {
        var code = 0, first = 0, index = 0
        for len in 1...15 {
            code |= try bits(1)
            let count = h.counts[len]
            if code - first < count { return h.symbols[index + code - first] }
            index += count; first = (first + count) << 1; code <<= 1
        }
        throw error("invalid Huffman code in the image data")
    }

    static let lengthBase = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258]
    static let lengthExtra = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
    static let distanceBase = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
    static let distanceExtra = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13]
    static let fixedLiteral = Huffman((0..<288).map { $0 < 144 ? 8 : $0 < 256 ? 9 : $0 < 280 ? 7 : 8 })
    static let fixedDistance = Huffman([Int](repeating: 5, count: 30))

    /// Literals and (length, distance) copies until the end-of-block symbol.
    mutating func codes(_ literal: Huffman, _ distance: Huffman) throws {
        while true {
            let symbol = try decode(literal)
            if symbol < 256 { try emit(UInt8(symbol)); continue }
            if symbol == 256 { return }
            guard symbol - 257 < 29 else { throw error("invalid length symbol \(symbol) in the image data") }
            let length = try Self.lengthBase[symbol - 257] + bits(Self.lengthExtra[symbol - 257])
            let d = try decode(distance)
            guard d < 30 else { throw error("invalid distance symbol \(d) in the image data") }
            let back = try Self.distanceBase[d] + bits(Self.distanceExtra[d])
            guard back <= out.count else { throw error("deflate distance \(back) reaches before the start of the image data") }
            guard size - out.count >= length else { throw error("image data is longer than \(size) bytes") }
            for _ in 0..<length { out.append(out[out.count - back]) }
        }
    }

    /// A block with its own codes, themselves sent as code lengths coded with a code-length code.
    mutating func dynamic() throws {
        let nLiteral = try bits(5) + 257, nDistance = try bits(5) + 1, nCode = try bits(4) + 4
        guard nLiteral <= 286, nDistance <= 30 else { throw error("bad deflate code counts in the image data") }
        let order = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]
        var codeLengths = [Int](repeating: 0, count: 19)
        for i in 0..<nCode { codeLengths[order[i]] = try bits(3) }
        let lengthCode = Huffman(codeLengths)
        guard lengthCode.left == 0 else { throw error("bad code-length code in the image data") }
        var lengths: [Int] = []
        while lengths.count < nLiteral + nDistance {
            let symbol = try decode(lengthCode)
            if symbol < 16 { lengths.append(symbol); continue }
            guard symbol != 16 || !lengths.isEmpty else { throw error("repeated code length with no previous length") }
            let value = symbol == 16 ? lengths.last! : 0
            let repeats = try symbol == 16 ? 3 + bits(2) : symbol == 17 ? 3 + bits(3) : 11 + bits(7)
            guard lengths.count + repeats <= nLiteral + nDistance else { throw error("too many code lengths in the image data") }
            lengths += repeatElement(value, count: repeats)
        }
        guard lengths[256] != 0 else { throw error("deflate block without an end-of-block code") }
        let literal = Huffman(Array(lengths[0..<nLiteral])), distance = Huffman(Array(lengths[nLiteral...]))
        guard literal.usable, distance.usable else { throw error("bad Huffman code lengths in the image data") }
        try codes(literal, distance)
    }
}
