import CDiffusion

@c @implementation
public func diffusion_version_number() -> UInt32 {
    UInt32(DIFFUSION_VERSION_MAJOR * 10000 + DIFFUSION_VERSION_MINOR * 100 + DIFFUSION_VERSION_PATCH)
}
