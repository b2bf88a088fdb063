import CDiffusion
#if canImport(Glibc)
import Glibc
#endif
import DiffusionCore
import Synchronization

/// The names as a static NULL-terminated array of C strings.
private let schedulerNameArray: UnsafeMutablePointer<UnsafePointer<CChar>?> = {
    let names = SchedulerRegistry.entries.map(\.name)
    let array = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: names.count + 1)
    for (i, n) in names.enumerated() { array[i] = UnsafePointer(strdup(n)) }
    array[names.count] = nil
    return array
}()

@c @implementation
public func diffusion_scheduler_names() -> UnsafePointer<UnsafePointer<CChar>?>! {
    UnsafePointer(schedulerNameArray)
}

/// Info strings by name, kept for the life of the process (each name at most once).
private let schedulerInfo = Locked<[String: UnsafeMutablePointer<CChar>]>([:])

@c @implementation
public func diffusion_scheduler_info_json(_ name: UnsafePointer<CChar>!, _ outJSON: UnsafeMutablePointer<UnsafePointer<CChar>?>!) -> diffusion_status {
    outJSON?.pointee = nil
    return boundary {
        guard let outJSON else { throw invalid("out_json is NULL") }
        guard let name else { throw invalid("name is NULL") }
        let n = try string(name, "name")
        guard let (resolved, implied) = SchedulerRegistry.resolve(n),
              let entry = SchedulerRegistry.entries.first(where: { $0.name == resolved }) else {
            throw invalid("unknown scheduler \"\(n)\" (known: \(SchedulerRegistry.knownNames))")
        }
        let defaults = SchedulerConfig(for: resolved)
        let json = JSONValue.object([
            ("name", .string(entry.name)),
            ("diffusers_class", .string(entry.diffusersClass)),
            ("implied", .object(implied)),
            ("settings", .array(entry.settings.map { .string($0) })),
            ("defaults", .object((defaults.json.objectValue ?? []).filter {
                SchedulerRegistry.shared.contains($0.0) || entry.settings.contains($0.0)
            })),
            ("default_steps", .number(Double(SchedulerRegistry.defaultSteps(resolved, config: defaults)))),
        ]).serialized
        outJSON.pointee = UnsafePointer(schedulerInfo.withLock { cache -> UnsafeMutablePointer<CChar> in
            if let s = cache[n] { return s }
            let s = strdup(json)!
            cache[n] = s
            return s
        })
    }
}

@c @implementation
public func diffusion_noise(_ seed: UInt64, _ out: UnsafeMutablePointer<Float>!, _ count: Int) -> diffusion_status {
    boundary {
        guard let out else { throw invalid("out is NULL") }
        guard count >= 0, count <= 1 << 32 else { throw invalid("count \(count) is out of range") }
        var g = TorchGenerator(seed: seed)
        g.fillNormal(UnsafeMutableBufferPointer(start: out, count: count))
    }
}

@c @implementation
public func diffusion_slerp(_ a: UnsafePointer<Float>!, _ b: UnsafePointer<Float>!, _ count: Int, _ t: Float,
                            _ out: UnsafeMutablePointer<Float>!) -> diffusion_status {
    boundary {
        guard let a, let b, let out else { throw invalid("a, b and out must not be NULL") }
        guard t >= 0, t <= 1 else { throw invalid("t \(t) must be in [0, 1]") }
        slerp(a, b, count: count, t: Double(t), into: out)
    }
}
