/// The reference's normalizer: `Sequence([NFC(), Replace(Regex("\s+"), " "), Lowercase()])`.
///
/// - NFC composes (`e` + U+0301 → `é`, `>` + U+0338 → `≯`).
/// - Every run of `\s` (Oniguruma's definition, see `CLIPCharacterClass.isSpace`) becomes one space.
///   Nothing is stripped, no control character is removed, no space is put around CJK ideographs.
/// - Lower-casing is per scalar with the full Unicode mapping and no context: `İ` → `i` + U+0307,
///   `Σ` → `σ` even at the end of a word, `ẞ` → `ß`. The result is not re-composed.
enum CLIPNormalizer {
    static func normalize(_ text: ArraySlice<Unicode.Scalar>) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(text.count)
        var inSpace = false
        for u in composed(text) {
            if CLIPCharacterClass.isSpace(u) {
                if !inSpace { out.append(" ") }
                inSpace = true
                continue
            }
            inSpace = false
            appendLowercased(u, to: &out)
        }
        return out
    }

    /// NFC. Text made only of scalars below U+0300 is already NFC (none of them composes or is a combining mark).
    private static func composed(_ text: ArraySlice<Unicode.Scalar>) -> [Unicode.Scalar] {
        if text.allSatisfy({ $0.value < 0x300 }) { return Array(text) }
        var s = ""
        s.unicodeScalars.append(contentsOf: text)
        // The standard library's NFC (public, underscored): no Foundation in this module.
        return Array(String(decoding: s._nfcCodeUnits, as: UTF8.self).unicodeScalars)
    }

    @inline(__always)
    private static func appendLowercased(_ u: Unicode.Scalar, to out: inout [Unicode.Scalar]) {
        if u.value < 0x80 {
            out.append(u.value >= 0x41 && u.value <= 0x5A ? Unicode.Scalar(UInt8(u.value + 0x20)) : u)
        } else if u.properties.changesWhenLowercased {
            out.append(contentsOf: u.properties.lowercaseMapping.unicodeScalars)
        } else {
            out.append(u)
        }
    }
}
