//! ARM PrimeCell DMA-330 (PL330) model (in progress).
