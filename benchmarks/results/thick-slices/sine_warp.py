import sys, SimpleITK as sitk, numpy as np
from scipy.ndimage import map_coordinates
src, out, truth = sys.argv[1:4]; amp=float(sys.argv[4]); lam=float(sys.argv[5]); seed=int(sys.argv[6])
zamp = float(sys.argv[7]) if len(sys.argv)>7 else amp
im=sitk.ReadImage(src, sitk.sitkFloat32); a=sitk.GetArrayFromImage(im)  # z,y,x
sp=np.array(im.GetSpacing())[::-1]  # array order
assert np.allclose(np.array(im.GetDirection()).reshape(3,3), np.eye(3))
rng=np.random.default_rng(seed)
grids=np.meshgrid(*[np.arange(n)*s for n,s in zip(a.shape,sp)], indexing='ij')
u=np.zeros((3,)+a.shape)
for k in range(3):
    for _ in range(3):
        ph=rng.uniform(0,2*np.pi,3); kv=rng.normal(size=3); kv/=np.linalg.norm(kv)
        u[k]+=np.sin(sum(2*np.pi*kv[j]*grids[j]/lam+ph[j] for j in range(3)))
    u[k]*= (zamp if k==0 else amp)/np.sqrt(3)
# inverse: v(y) = -u(y+v(y))  (array order, mm)
v=-u.copy()
idx=np.stack([g/s for g,s in zip(grids,sp)])
for it in range(30):
    c=idx+v/sp[:,None,None,None]
    v=-np.stack([map_coordinates(u[k],c,order=1,mode='nearest') for k in range(3)])
c=idx+v/sp[:,None,None,None]
m2=map_coordinates(a,c,order=1,mode='constant',cval=0.0).astype(np.float32)
o=sitk.GetImageFromArray(m2); o.CopyInformation(im); sitk.WriteImage(o,out)
np.save(truth,u)  # array order components, mm
print('true |u| mean %.2f max %.2f mm'%(np.linalg.norm(u,axis=0).mean(), np.linalg.norm(u,axis=0).max()))
