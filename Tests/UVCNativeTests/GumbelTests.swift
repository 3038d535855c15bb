import XCTest
@testable import UVCNative

/// The generator, Gumbel noise and the three binary gate samplers.
final class GumbelTests: XCTestCase {
    func testSplitMix64MatchesReferenceOutputs() {
        var mix = SplitMix64(seed: 0)
        XCTAssertEqual((0..<4).map { _ in mix.next() },
                       [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F, 0xF88B_B8A8_724C_81EC])
    }

    func testXoshiroMatchesPublishedVector() throws {
        var rng = try Xoshiro256StarStar(words: (1, 2, 3, 4))
        XCTAssertEqual((0..<5).map { _ in rng.next() },
                       [11520, 0, 1_509_978_240, 1_215_971_899_390_074_240, 1_216_172_134_540_287_360])
    }

    func testXoshiroSeededFromSplitMixMatchesPlainPythonReference() {
        var rng = Xoshiro256StarStar(seed: 42)
        XCTAssertEqual((0..<3).map { _ in rng.next() },
                       [0x1578_0B2E_0C2E_C716, 0x6104_D986_6D11_3A7E, 0xAE17_5332_39E4_99A1])
    }

    func testAllZeroStateIsRefused() {
        XCTAssertThrowsError(try Xoshiro256StarStar(words: (0, 0, 0, 0))) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "state.rng")
        }
    }

    func testSameSeedSameStreamOtherSeedOtherStream() {
        var a = Xoshiro256StarStar(seed: 7), b = Xoshiro256StarStar(seed: 7), c = Xoshiro256StarStar(seed: 8)
        let sa = (0..<100).map { _ in a.next() }
        XCTAssertEqual(sa, (0..<100).map { _ in b.next() })
        XCTAssertNotEqual(sa, (0..<100).map { _ in c.next() })
    }

    func testOpenUnitStaysInsideTheIntervalWithMeanOneHalf() {
        var rng = Xoshiro256StarStar(seed: 1)
        var total = 0.0
        for _ in 0..<100_000 {
            let u = rng.nextOpenUnit()
            XCTAssert(u > 0 && u < 1)
            total += u
        }
        // σ of the mean is 1/sqrt(12·1e5) ≈ 0.0009.
        XCTAssertEqual(total / 100_000, 0.5, accuracy: 0.004)
    }

    func testTheGumbelGateIsTheTwoClassSoftmaxOfItsNoise() {
        for (d, tau) in [(0.3, 0.7), (-1.2, 0.5), (2.0, 1.3)] {
            var rng = Xoshiro256StarStar(seed: 4), copy = rng
            let draw = GateSampler.gumbel.sample(logit: d, tau: tau, eps: 0.1, straightThrough: false, rng: &rng)
            let g0 = GumbelSoftmax.noise(copy.nextOpenUnit()), g1 = GumbelSoftmax.noise(copy.nextOpenUnit())
            // softmax((0, d) + (g0, g1)) / τ), the run entry.
            let run = expReference((d + g1) / tau), skip = expReference(g0 / tau)
            XCTAssertEqual(draw.soft, run / (run + skip), accuracy: 1e-12)
        }
    }

    func testRandomGatesRunWithProbabilitySigmoidOfTheLogit() {
        for sampler in [GateSampler.gumbel, .sigmoid] {
            for d in [-1.5, 0.0, 2.0] {
                var rng = Xoshiro256StarStar(seed: 11)
                let n = 20_000
                var on = 0
                for _ in 0..<n {
                    on += sampler.sample(logit: d, tau: 0.5, eps: 0.1, straightThrough: true, rng: &rng).value == 1 ? 1 : 0
                }
                let p = 1 / (1 + expReference(-d))
                XCTAssertEqual(sampler.probability(logit: d, eps: 0.1), p, accuracy: 1e-12)
                XCTAssertEqual(Double(on) / Double(n), p, accuracy: 4 * (p * (1 - p) / Double(n)).squareRoot(),
                               "\(sampler) d=\(d)")
            }
        }
    }

    func testSampleSlopeIsTheDerivativeOfTheSoftSampleForTheSameNoise() {
        for sampler in GateSampler.allCases {
            for d in [-0.7, 0.4, 1.9] {
                let rng = Xoshiro256StarStar(seed: 5)
                let soft = { (x: Double) -> Double in
                    var r = rng
                    return sampler.sample(logit: x, tau: 0.8, eps: 0.3, straightThrough: false, rng: &r).soft
                }
                var r = rng
                let draw = sampler.sample(logit: d, tau: 0.8, eps: 0.3, straightThrough: false, rng: &r)
                XCTAssertEqual(draw.value, draw.soft)
                XCTAssertEqual(draw.slope, (soft(d + 1e-6) - soft(d - 1e-6)) / 2e-6, accuracy: 1e-7, "\(sampler) d=\(d)")
            }
        }
    }

    func testStraightThroughForwardsTheHardDecisionOfTheSoftSample() {
        var rng = Xoshiro256StarStar(seed: 9)
        for _ in 0..<200 {
            let draw = GateSampler.gumbel.sample(logit: 0.3, tau: 0.5, eps: 0.1, straightThrough: true, rng: &rng)
            XCTAssertEqual(draw.value, draw.soft > 0.5 ? 1 : 0)
        }
    }

    func testSamplersConsumeTwoOneAndZeroDraws() {
        for (sampler, draws) in [(GateSampler.gumbel, 2), (.sigmoid, 1), (.softL0, 0)] {
            var a = Xoshiro256StarStar(seed: 2), b = a
            _ = sampler.sample(logit: 0.1, tau: 0.5, eps: 0.1, straightThrough: true, rng: &a)
            for _ in 0..<draws { _ = b.next() }
            XCTAssertEqual(a, b, "\(sampler)")
        }
    }

    func testSoftL0GateValueSlopeAndDecision() {
        let eps = 0.25
        XCTAssertEqual(GateSampler.softL0.probability(logit: 1.5, eps: eps), 2.25 / 2.5, accuracy: 1e-15)
        XCTAssertEqual(GateSampler.softL0.probability(logit: -2, eps: eps), 0)
        XCTAssertEqual(GateSampler.softL0.probabilitySlope(logit: -2, eps: eps), 0)
        for d in [0.2, 0.5, 3.0] {
            let p = { GateSampler.softL0.probability(logit: $0, eps: eps) }
            XCTAssertEqual(GateSampler.softL0.probabilitySlope(logit: d, eps: eps), (p(d + 1e-6) - p(d - 1e-6)) / 2e-6,
                           accuracy: 1e-7)
        }
        // At the 1e-300 floor of ε, q² underflows: the slope must stay finite, not 0/0.
        for d in [1e-200, 1e-150, 1e-10, 1.0] {
            let slope = GateSampler.softL0.probabilitySlope(logit: d, eps: 1e-300)
            XCTAssertTrue(slope.isFinite && slope >= 0, "d = \(d): \(slope)")
        }
        // Runs iff d² > ε, i.e. d > 0.5 here.
        XCTAssertFalse(GateSampler.softL0.decision(logit: 0.49, eps: eps))
        XCTAssertTrue(GateSampler.softL0.decision(logit: 0.51, eps: eps))
        XCTAssertTrue(GateSampler.gumbel.decision(logit: 1e-9, eps: eps))
        XCTAssertFalse(GateSampler.sigmoid.decision(logit: 0, eps: eps))
    }
}

/// e^x by its series, independent of the C library the core uses (relative error ~1e-13).
func expReference(_ x: Double) -> Double {
    // e^x = (e^(x/2^k))^(2^k), the inner power small enough for a short series.
    var y = x / 1024, term = 1.0, sum = 1.0
    for n in 1...20 {
        term *= y / Double(n)
        sum += term
    }
    y = sum
    for _ in 0..<10 { y *= y }
    return y
}
