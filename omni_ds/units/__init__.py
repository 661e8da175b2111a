"""Speech units for stage 2: fairseq mHuBERT -> layer-11 features -> k-means -> merged repeats.

fairseq_checkpoint  read/write fairseq .pt without fairseq (restricted unpickler, inert stand-ins)
hubert_config       the checkpoint's architecture fields; refusal of unmapped architectures
hubert              mapping onto transformers' HubertModel + padding-masked batch forward
cpu_bf16            the same forward in bf16 on an AMX / AVX512-BF16 CPU (--dtype bf16)
kmeans              centroids from joblib .bin or .npy; nearest centroid as one GEMM
extract             batched, chunked (100 s) extraction whose units do not depend on batching
loader, parts       audio loading in workers; resumable per-part output and the merge
fairseq_backend     --backend fairseq (the reference code path, needs the `fairseq` extra)
kmeans_pickle       the released k-means .bin through an allow-list unpickler (no code runs)
job                 ExtractionJob + run_job: shards, resumable parts, the merge (tools/extract_units.py)
"""
