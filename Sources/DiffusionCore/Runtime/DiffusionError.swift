/// An error that crosses the C boundary as a `diffusion_status` plus a message naming the problem.
public struct DiffusionError: Error, CustomStringConvertible {
    /// Mirrors `diffusion_status` in include/diffusion.h (append-only).
    public enum Code: Int32, Sendable {
        case invalidArgument = 1
        case io = 2
        case invalidFile = 3
        case unsupported = 4
        case modelMismatch = 5
        case cancelled = 6
        case noUnconditional = 7
        case outOfMemory = 8
        case invalidState = 9
        case `internal` = 10
        case callback = 11
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    /// Prefixes the message with where it happened ("unet/config.json: ...").
    public func context(_ prefix: String) -> DiffusionError {
        DiffusionError(code, "\(prefix): \(message)")
    }
}
