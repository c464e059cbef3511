"""deepcontext: context-prediction pretraining (Doersch et al., ICCV 2015) on Caffe."""
