/// Epoch-driven schedules. `epoch` is the fractional training epoch (warm-up included).
extension SolverConfig {
    /// Before `warmupEpochs` only the weights train: no architecture update, gates fully on.
    public func isWarmup(_ epoch: Double) -> Bool { epoch < warmupEpochs }

    /// η_z = zLR · zLRGamma^k, k the number of `zLRSchedule` epochs already reached.
    /// UVC's `--zlr_schedule_list 1,5,9,13,17` meant a z learning rate that grows during the
    /// run but never reached the optimizer; growth keeps z tracking the slowly rising group
    /// duals, and `zGradClip` bounds each step.
    public func zLearningRate(_ epoch: Double) -> Double {
        var rate = zLR
        for e in zLRSchedule where e <= epoch { rate *= zLRGamma }
        return rate
    }

    /// Epochs of architecture search so far.
    func searchEpochs(_ epoch: Double) -> Double { max(0, epoch - warmupEpochs) }

    /// Gumbel / sigmoid temperature τ(epoch) = max(tauMin, tau · tauDecay^(search epochs)).
    public func temperature(_ epoch: Double) -> Double {
        max(tauMin, tau * power(tauDecay, searchEpochs(epoch)))
    }

    /// Soft-L0 ε(epoch) = eps · epsDecay^(search epochs): the gate sharpens as ε shrinks.
    public func softL0Eps(_ epoch: Double) -> Double {
        // Floored so that a very long run never divides 0 by 0 in the gate.
        max(eps * power(epsDecay, searchEpochs(epoch)), 1e-300)
    }
}
