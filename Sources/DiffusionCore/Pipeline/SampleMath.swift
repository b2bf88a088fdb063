#if canImport(Glibc)
import Glibc
#endif

extension UnsafeMutablePointer where Pointee == Float {
    public func allFinite(_ count: Int) -> Bool {
        var ok = true
        for i in 0..<count { ok = ok && self[i].isFinite }
        return ok
    }
}

/// Spherical linear interpolation between two noise tensors (for smooth morphs between seeds):
/// with θ the angle between a and b, (sin((1−t)θ) a + sin(tθ) b) / sin θ; linear when a and b are
/// nearly parallel (|cos θ| > 0.9995). Computed in double.
public func slerp(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int, t: Double,
                  into out: UnsafeMutablePointer<Float>) {
    var dot = 0.0, na = 0.0, nb = 0.0
    for i in 0..<count {
        let x = Double(a[i]), y = Double(b[i])
        dot += x * y; na += x * x; nb += y * y
    }
    let cosTheta = na > 0 && nb > 0 ? dot / (na.squareRoot() * nb.squareRoot()) : 1
    var wa = 1 - t, wb = t
    if abs(cosTheta) <= 0.9995 {
        let theta = acos(cosTheta), s = sin(theta)
        wa = sin((1 - t) * theta) / s
        wb = sin(t * theta) / s
    }
    for i in 0..<count { out[i] = Float(wa * Double(a[i]) + wb * Double(b[i])) }
}
