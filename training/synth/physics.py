"""Dual-energy physics: material attenuation (Beer-Lambert at two energies), photon noise, detector blur."""

from __future__ import annotations

import cv2
import numpy as np

# Mass attenuation coefficients mu/rho [cm^2/g] (total, with coherent scattering) at effective energies
# of ~60 keV (low-energy channel) and ~150 keV (high-energy channel), rounded from the NIST XCOM /
# X-ray mass attenuation tables (Hubbell & Seltzer, NISTIR 5632): water 0.206/0.151, polyethylene
# ~0.197/0.149, cellulose ~0.197/0.146, aluminium 0.278/0.138, borosilicate/soda-lime glass
# ~0.31/0.136, iron 1.205/0.196, copper 1.593/0.222. Densities [g/cm^3] are typical values.
# The low/high ratio of mu is what a dual-energy scanner measures: ~1.35 for organics, ~2 for
# aluminium, ~2.3 for glass, ~6 for steel -- so materials separate in the high/low ratio.
MATERIALS: dict[str, tuple[float, float, float]] = {
    #            mu/rho low, mu/rho high, density
    "organic": (0.206, 0.151, 1.00),  # water, food, drinks, clothing (as water-equivalent)
    "plastic": (0.197, 0.149, 1.20),  # PE/PET/ABS mix
    "paper": (0.197, 0.146, 0.80),  # paper / carton board
    "aluminium": (0.278, 0.138, 2.70),
    "glass": (0.310, 0.136, 2.50),
    "steel": (1.205, 0.196, 7.87),
    "copper": (1.593, 0.222, 8.96),  # cable cores, coils
}
# Linear attenuation [1/cm] per material as a (low, high) pair: optical depth = coef * thickness_cm.
COEF: dict[str, np.ndarray] = {
    name: np.array([m_lo * rho, m_hi * rho], dtype=np.float32)
    for name, (m_lo, m_hi, rho) in MATERIALS.items()
}

# Detector model. Air reads near the top of the 16-bit range (grey level per energy); the number
# of photons per pixel in air sets the Poisson noise (the low-energy channel collects fewer).
AIR_LEVEL = (58000.0, 61000.0)  # (low, high) grey level of unattenuated beam
PHOTONS_IN_AIR = (6000.0, 12000.0)  # (low, high) detected photons per pixel in air
BLUR_SIGMA_PX = 0.7  # scintillator / line-detector spread, in pixels
DARK_LEVEL = 40.0  # electronic offset (grey levels)


def expose(depth: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Optical depths [H, W, 2] (low, high) -> (high, low) uint16 detector images.

    Beer-Lambert transmission exp(-depth), Poisson photon counts, detector blur, per-column
    gain variation of a line-scan detector, quantisation to 16 bits.
    """
    h, w, _ = depth.shape
    # Unit Gaussian noise from OpenCV's generator (4x faster than numpy's), seeded from `rng` so
    # the scan stays a pure function of the caller's generator (cv2's RNG state is per thread).
    cv2.setRNGSeed(int(rng.integers(2**31 - 1)))
    noise = cv2.randn(np.empty((2 * h, w), np.float32), 0.0, 1.0).reshape(2, h, w)
    gains = 1.0 + 0.004 * rng.standard_normal((2, w)).astype(np.float32)  # detector column gains
    out = []
    planes = cv2.split(depth)  # (low, high)
    for ch in (1, 0):  # high first
        trans = cv2.exp(planes[ch] * np.float32(-1.0))  # Beer-Lambert
        lam = trans * np.float32(PHOTONS_IN_AIR[ch])  # expected photons per pixel
        # Poisson noise: Gaussian with variance = mean where counts are large (indistinguishable
        # there and 3x faster), exact Poisson draws where the mean is below 30 photons.
        counts = lam + cv2.sqrt(lam) * noise[ch]
        low_mask = lam < 30.0
        if low_mask.any():
            counts[low_mask] = rng.poisson(lam[low_mask])
        grey = counts * (gains[ch] * np.float32(AIR_LEVEL[ch] / PHOTONS_IN_AIR[ch]))[None, :]
        grey = cv2.GaussianBlur(grey, (0, 0), BLUR_SIGMA_PX)
        np.clip(grey, 0.0, 65535.0 - DARK_LEVEL - 0.5, out=grey)
        grey += DARK_LEVEL + 0.5  # + 0.5: round to nearest on the cast below
        out.append(grey.astype(np.uint16))
    return out[0], out[1]
