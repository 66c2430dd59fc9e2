import sys, json, SimpleITK as sitk, numpy as np
run, truth, mask = sys.argv[1:4]
u=np.load(truth)
f=sitk.GetArrayFromImage(sitk.ReadImage(run+'/field.nii.gz', sitk.sitkVectorFloat64))  # z,y,x,3 (x,y,z world)
est=np.moveaxis(f[...,::-1],-1,0)  # array order
m=sitk.GetArrayFromImage(sitk.ReadImage(mask))>0
e0=np.linalg.norm(u,axis=0)[m].mean(); e1=np.linalg.norm(est-u,axis=0)[m].mean()
r=json.load(open(run+'/report.json'))
print(f'EPE none {e0:.3f} mm  reg {e1:.3f} mm  | bending per level', [round(l['regulariser']['bending_mm2'],2) for l in r['levels']], 'membrane',[round(l['regulariser']['membrane'],3) for l in r['levels']], 'shapes',[l['shape'] for l in r['levels']], 'secs', r['seconds'], 'sc', r['options']['bending_scale'], r['options']['bending'])
