import sys, json, numpy as np
sys.path.insert(0, "/work/main/benchmarks")
import cases as C
for n in sys.argv[1:]:
    c = C.CASES[n](); sp = np.asarray(c["spacing"], float); d = len(sp)
    x = np.indices(c["fixed"].shape, dtype=float) * sp.reshape((d,) + (1,) * d)
    m = c["mask"]; X = np.stack([x[k][m] for k in range(d)] + [np.ones(m.sum())], 1)
    Y = np.stack([(x[k] + c["true_field"][k])[m] for k in range(d)], 1)
    B, *_ = np.linalg.lstsq(X, Y, rcond=None); A = B[:d].T; t = B[d]
    ctr = X[:, :d].mean(0); U, S, Vt = np.linalg.svd(A)
    R = U @ Vt; ang = np.degrees(np.arctan2(R[1, 0], R[0, 0])) if d == 2 else np.degrees(np.arccos((np.trace(R) - 1) / 2))
    res = Y - X @ B
    print(n, "angle", round(float(ang), 2), "sv", S.round(3), "disp of mask centre (mm)", (A @ ctr + t - ctr).round(2),
          "residual non-affine |v| mean (vox)", round(float(np.sqrt(((res / sp) ** 2).sum(1)).mean()), 3),
          "truth |v| mean (vox)", round(float(np.sqrt(((Y - X[:, :d]) / sp) ** 2).sum(1).mean()), 3) if False else "")
