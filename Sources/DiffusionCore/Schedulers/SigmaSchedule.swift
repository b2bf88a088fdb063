#if canImport(Glibc)
import Glibc
#endif

/// The noise levels of the variance-exploding view (k-diffusion, Karras et al.):
/// x = x_0 + σ ε with σ = sqrt((1 − ᾱ) / ᾱ). Shared by the Euler, Heun, LMS, DPM-Solver and UniPC
/// schedulers; each function reproduces diffusers' numpy/torch arithmetic and precision.
enum SigmaSchedule {
    /// σ of every training timestep, in float32 as torch computes ((1 − ᾱ) / ᾱ) ** 0.5.
    static func trainingSigmas(_ alphasCumprod: [Float]) -> [Float] {
        alphasCumprod.map { a in ((1 - a) / a).squareRoot() }
    }

    /// np.interp(x, arange(fp.count), fp) in double: fp[j] at a grid point, else the slope form.
    static func interpolate(_ x: Double, _ fp: [Float]) -> Double {
        let n = fp.count
        if x <= 0 { return Double(fp[0]) }
        if x >= Double(n - 1) { return Double(fp[n - 1]) }
        let j = Int(x.rounded(.down))
        if Double(j) == x { return Double(fp[j]) }
        let slope = Double(fp[j + 1]) - Double(fp[j])
        return slope * (x - Double(j)) + Double(fp[j])
    }

    /// np.linspace(start, stop, count) in double (i × step + start, the last value exactly stop).
    static func linspace(_ start: Double, _ stop: Double, _ count: Int) -> [Double] {
        guard count > 1 else { return count == 1 ? [start] : [] }
        let step = (stop - start) / Double(count - 1)
        var out = (0..<count).map { Double($0) * step + start }
        out[count - 1] = stop
        return out
    }

    /// Karras et al. (2022) noise levels: (σ_max^(1/ρ) + ramp (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, ρ = 7,
    /// ramp = linspace(0, 1, count) (diffusers' _convert_to_karras).
    static func karras(sigmaMin: Double, sigmaMax: Double, count: Int, rho: Double = 7) -> [Double] {
        let minInv = pow(sigmaMin, 1 / rho), maxInv = pow(sigmaMax, 1 / rho)
        return linspace(0, 1, count).map { pow(maxInv + $0 * (minInv - maxInv), rho) }
    }

    /// The (fractional) training timestep of noise level σ: linear interpolation in log σ between
    /// the two neighbouring training levels (diffusers' _sigma_to_t; logSigmas = float32 log σ_train).
    static func timestep(forSigma sigma: Double, logSigmas: [Float]) -> Double {
        let logSigma = log(max(sigma, 1e-10))
        // low = the last index whose log σ is <= log σ (0 if none), at most count − 2
        var low = 0
        for i in logSigmas.indices where logSigma - Double(logSigmas[i]) >= 0 { low = i }
        low = min(low, logSigmas.count - 2)
        // low − log σ is float64 (numpy promotes against the float64 σ), low − high stays float32
        let lo = Double(logSigmas[low]), width = Double(logSigmas[low] - logSigmas[low + 1])
        let w = min(max((lo - logSigma) / width, 0), 1)
        return (1 - w) * Double(low) + w * Double(low + 1)
    }
}
