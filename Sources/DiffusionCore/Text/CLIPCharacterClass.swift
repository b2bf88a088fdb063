/// How the reference tokenizer's regexes see one scalar: `\s`, `\p{L}`, `\p{N}`, or anything else.
///
/// The reference (transformers 5's CLIPTokenizer over the `tokenizers` library) evaluates CLIP's
/// pattern with Oniguruma, whose Unicode tables in tokenizers 0.23 are those of Unicode 16.0. The
/// Swift standard library may know a newer Unicode; a scalar assigned after 16.0 is unassigned
/// (category Cn) to the reference, so it is `.other` here too.
enum CLIPCharacterClass: UInt8 {
    case space, letter, number, other

    /// The Unicode version of the reference's character tables.
    static let referenceUnicodeMajor = 16

    private static let asciiTable: [CLIPCharacterClass] = (0..<128).map { v in
        switch v {
        case 0x09...0x0D, 0x20: return .space
        case 0x30...0x39: return .number
        case 0x41...0x5A, 0x61...0x7A: return .letter
        default: return .other
        }
    }

    @inline(__always)
    static func of(_ u: Unicode.Scalar) -> CLIPCharacterClass {
        if u.value < 0x80 { return asciiTable[Int(u.value)] }
        let props = u.properties
        switch props.generalCategory {
        case .spaceSeparator, .lineSeparator, .paragraphSeparator:
            return .space
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return knownToReference(props) ? .letter : .other
        case .decimalNumber, .letterNumber, .otherNumber:
            return knownToReference(props) ? .number : .other
        default:
            return u.value == 0x85 ? .space : .other  // NEL is Cc but Oniguruma's \s includes it
        }
    }

    /// Oniguruma's `\s` on Unicode text: U+0009–U+000D, U+0085, Zs, Zl, Zp (not U+001C–U+001F, unlike Python).
    @inline(__always)
    static func isSpace(_ u: Unicode.Scalar) -> Bool { of(u) == .space }

    @inline(__always)
    private static func knownToReference(_ props: Unicode.Scalar.Properties) -> Bool {
        guard let age = props.age else { return false }
        return age.major <= referenceUnicodeMajor
    }
}
