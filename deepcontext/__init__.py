"""deepcontext: context-prediction pretraining (Doersch et al., ICCV 2015)
on Caffe."""
import os

# glog 0.6 writes the year into Caffe's log prefix; Caffe's own
# tools/extra/parse_log.py reads the 2015 form.  glog reads the flag once,
# when Caffe's library loads, so it is set here, before any of our modules
# can load Caffe (train/multigpu.py and data/lmdb_source.py do on import).
# A setting of the user's wins.
os.environ.setdefault('GLOG_log_year_in_prefix', 'false')
