// libFuzzer target for the CLI's PNG decoder (issue 10): built by `make fuzz` (and replayed over
// its corpus by `make test`) from Sources/DiffusionCLI/PNGDecoder.swift and PNG.swift with the
// `import DiffusionCore` line removed and this stand-in for the one type they use from it.

/// DiffusionCore's error, as far as the decoder uses it.
struct DiffusionError: Error {
    enum Code { case invalidFile, io }
    let code: Code, message: String
    init(_ code: Code, _ message: String) { self.code = code; self.message = message }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPNG(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // The CLI refuses sizes the model cannot take before inflating; here: up to 16 MP.
    _ = try? PNGDecoder(path: "input.png").decode(bytes) { w, h in
        if w * h > 1 << 24 { throw DiffusionError(.invalidFile, "too large") }
    }
    return 0
}
