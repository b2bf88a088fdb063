import CDiffusion

@c @implementation
public func diffusion_version_number() -> UInt32 {
    UInt32(DIFFUSION_VERSION_MAJOR * 10000 + DIFFUSION_VERSION_MINOR * 100 + DIFFUSION_VERSION_PATCH)
}

private let versionString: StaticString = "0.3.0"

@c @implementation
public func diffusion_version_string() -> UnsafePointer<CChar>! {
    UnsafeRawPointer(versionString.utf8Start).assumingMemoryBound(to: CChar.self)
}

@c @implementation
public func diffusion_status_string(_ status: diffusion_status) -> UnsafePointer<CChar>! {
    let name: StaticString
    switch status {
    case DIFFUSION_OK: name = "DIFFUSION_OK"
    case DIFFUSION_ERROR_INVALID_ARGUMENT: name = "DIFFUSION_ERROR_INVALID_ARGUMENT"
    case DIFFUSION_ERROR_IO: name = "DIFFUSION_ERROR_IO"
    case DIFFUSION_ERROR_INVALID_FILE: name = "DIFFUSION_ERROR_INVALID_FILE"
    case DIFFUSION_ERROR_UNSUPPORTED: name = "DIFFUSION_ERROR_UNSUPPORTED"
    case DIFFUSION_ERROR_MODEL_MISMATCH: name = "DIFFUSION_ERROR_MODEL_MISMATCH"
    case DIFFUSION_ERROR_CANCELLED: name = "DIFFUSION_ERROR_CANCELLED"
    case DIFFUSION_ERROR_NO_UNCONDITIONAL: name = "DIFFUSION_ERROR_NO_UNCONDITIONAL"
    case DIFFUSION_ERROR_OUT_OF_MEMORY: name = "DIFFUSION_ERROR_OUT_OF_MEMORY"
    case DIFFUSION_ERROR_INVALID_STATE: name = "DIFFUSION_ERROR_INVALID_STATE"
    case DIFFUSION_ERROR_INTERNAL: name = "DIFFUSION_ERROR_INTERNAL"
    case DIFFUSION_ERROR_CALLBACK: name = "DIFFUSION_ERROR_CALLBACK"
    default: name = "unknown status"
    }
    return UnsafeRawPointer(name.utf8Start).assumingMemoryBound(to: CChar.self)
}

@c @implementation
public func diffusion_last_error() -> UnsafePointer<CChar>! {
    cdiffusion_last_error()
}
