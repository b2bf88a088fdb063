/// diffusers `LCMScheduler` — not implemented yet.
public final class LCMScheduler: Scheduler {
    public let config: SchedulerConfig
    public let timesteps: [Float] = []
    public init(config: SchedulerConfig, steps: Int) throws {
        self.config = config
        throw DiffusionError(.unsupported, "scheduler LCMScheduler is not implemented yet")
    }
    public func alphaProd(at index: Int) -> Float { 1 }
    public func needsNoise(at index: Int) -> Bool { false }
    public func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>?, shape: SampleShape,
                     prev: UnsafeMutablePointer<Float>) {}
}
