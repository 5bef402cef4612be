import sys, collections
lines=[l.strip() for l in open(sys.argv[1]) if l.startswith('Executing')]
starts=[i for i,l in enumerate(lines) if l.startswith('Executing PadKernel')][::2]
segs=[lines[a:b] for a,b in zip(starts,starts[1:])]
for k,s in enumerate(segs):
    print('step segment',k+1,'launches',len(s))
last=segs[-1]
c=collections.Counter(l.split(' | ')[0].replace('Executing ','')+(' (fused args)' if 'FusedMatmulArgs' in l else '') for l in last)
for n,v in c.most_common(): print(f'{v:4d} {n}')
