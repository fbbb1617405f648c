"""Distillation losses: pure functions of tensors, each wrapped by a small registered module."""

from kd_lightning.losses._registry import create_loss, list_losses, register_loss
from kd_lightning.losses._utils import check_temperature
from kd_lightning.losses.ab import ABLoss, ab_loss, activation_boundary_loss
from kd_lightning.losses.attention import AttentionTransferLoss, at_loss, attention_map
from kd_lightning.losses.base import DistillationLoss, LogitLoss
from kd_lightning.losses.camkd_feature import CAMKDFeatureLoss, camkd_feature_loss
from kd_lightning.losses.cc import CCLoss, cc_loss
from kd_lightning.losses.context import StepContext
from kd_lightning.losses.crd import CRDLoss, crd_loss, nce_loss
from kd_lightning.losses.ctkd import CTKDLoss, cosine_reversal_strength, kd_loss_at, reverse_gradient
from kd_lightning.losses.dist import DISTLoss, dist_loss
from kd_lightning.losses.dkd import DKDLoss, dkd_loss
from kd_lightning.losses.fitnet import FitNetLoss, hint_loss
from kd_lightning.losses.fsp import FSPLoss, fsp_loss, fsp_matrix
from kd_lightning.losses.ft import FTLoss, factor_map, ft_loss
from kd_lightning.losses.kd import KDLoss, kd_loss
from kd_lightning.losses.kdsvd import KDSVDLoss, kdsvd_loss, singular_vectors
from kd_lightning.losses.mlkd import MLKDLoss, mlkd_loss
from kd_lightning.losses.nkd import NKDLoss, nkd_loss
from kd_lightning.losses.nst import NSTLoss, nst_loss
from kd_lightning.losses.ofd import OFDLoss, ofd_loss, ofd_margins
from kd_lightning.losses.pkt import PKTLoss, pkt_loss
from kd_lightning.losses.pseudo_label import PseudoLabelLoss, pseudo_label_loss, pseudo_label_targets
from kd_lightning.losses.reviewkd import ReviewKDLoss, hcl_loss
from kd_lightning.losses.rkd import RKDLoss, rkd_angle_loss, rkd_distance_loss, rkd_loss
from kd_lightning.losses.similarity import SimilarityPreservingLoss, sp_loss
from kd_lightning.losses.term import LossTerm, as_term
from kd_lightning.losses.tinybert import (
    AttentionScoreLoss,
    HiddenStateLoss,
    attention_map_mse,
    attention_scores,
    hidden_state_mse,
)
from kd_lightning.losses.vid import VIDLoss, vid_loss
from kd_lightning.losses.wkd import WKDLogitLoss, classifier_cost_matrix, sinkhorn_distance, wkd_logit_loss
from kd_lightning.outputs import ModelOutputs

__all__ = [
    "ABLoss",
    "AttentionScoreLoss",
    "AttentionTransferLoss",
    "CAMKDFeatureLoss",
    "CCLoss",
    "CRDLoss",
    "CTKDLoss",
    "DISTLoss",
    "DKDLoss",
    "DistillationLoss",
    "FSPLoss",
    "FTLoss",
    "FitNetLoss",
    "HiddenStateLoss",
    "KDLoss",
    "KDSVDLoss",
    "LogitLoss",
    "LossTerm",
    "MLKDLoss",
    "ModelOutputs",
    "NKDLoss",
    "NSTLoss",
    "OFDLoss",
    "PKTLoss",
    "PseudoLabelLoss",
    "RKDLoss",
    "ReviewKDLoss",
    "SimilarityPreservingLoss",
    "StepContext",
    "VIDLoss",
    "WKDLogitLoss",
    "ab_loss",
    "activation_boundary_loss",
    "as_term",
    "at_loss",
    "attention_map_mse",
    "attention_map",
    "attention_scores",
    "camkd_feature_loss",
    "cc_loss",
    "check_temperature",
    "classifier_cost_matrix",
    "cosine_reversal_strength",
    "crd_loss",
    "create_loss",
    "dist_loss",
    "dkd_loss",
    "factor_map",
    "fsp_loss",
    "fsp_matrix",
    "ft_loss",
    "hcl_loss",
    "hidden_state_mse",
    "hint_loss",
    "kd_loss",
    "kd_loss_at",
    "kdsvd_loss",
    "list_losses",
    "mlkd_loss",
    "nce_loss",
    "nkd_loss",
    "nst_loss",
    "ofd_loss",
    "ofd_margins",
    "pkt_loss",
    "pseudo_label_loss",
    "pseudo_label_targets",
    "register_loss",
    "reverse_gradient",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "singular_vectors",
    "sinkhorn_distance",
    "sp_loss",
    "vid_loss",
    "wkd_logit_loss",
]
