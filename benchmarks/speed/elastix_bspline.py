"""itk-elastix with its default 'bspline' parameter map, 2 threads; writes transformix's deformation field
(physical LPS mm) to OUT.

    python benchmarks/speed/elastix_bspline.py FIXED.nii.gz MOVING.nii.gz OUT.nii.gz
"""
import sys

import itk

fixed, moving, out = sys.argv[1:4]
itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(2)
F, M = itk.imread(fixed, itk.F), itk.imread(moving, itk.F)
po = itk.ParameterObject.New()
po.AddParameterMap(po.GetDefaultParameterMap("bspline"))
_, res = itk.elastix_registration_method(F, M, parameter_object=po, log_to_console=False)
itk.imwrite(itk.transformix_deformation_field(M, res), out)
