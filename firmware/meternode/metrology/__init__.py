# Metrology: viper kernels -> per-cycle sums -> calibrated quantities -> energy registers.
