"""benchmarks/profile_step.py's reading of optimised HLO: every op gets a model part."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / 'benchmarks'))

from profile_step import classify, hlo_instructions

LOOP_OP = 'jit(train_step)/transpose(jvp(temporal_attention))/while'

WHILE = (
  '%while.2 = (s32[], f32[10,32,256]{2,1,0}) while(%tuple.0), condition=%region_1.cond, '
  f'body=%region_1.body, metadata={{op_name="{LOOP_OP}" stack_frame_id=5}}'
)
ADD = (
  '%add.5 = f32[10,32,256]{2,1,0} add(%p.1, %p.1), '
  'metadata={op_name="jit(train_step)/jvp(conv)/add"}'
)
# Shaped like XLA's CPU output: a loop body's library fusion without metadata,
# a loop whose state is a tuple (spaces in its shape), a labelled op.
HLO = f"""
%fused_computation.3 (param_0: f32[10,32,256]) -> f32[10,32,256] {{
  ROOT %dot.7 = f32[10,32,256]{{2,1,0}} dot(%param_0, %param_0), lhs_batch_dims={{0}}
}}

%region_1.body (arg_tuple.1: (s32[], f32[10,32,256])) -> (s32[], f32[10,32,256]) {{
  %ynn_fusion.3 = f32[10,32,256]{{2,1,0}} fusion(%gte.1), kind=kCustom, calls=%fused_computation.3
  ROOT %tuple.1 = (s32[], f32[10,32,256]{{2,1,0}}) tuple(%gte.0, %ynn_fusion.3)
}}

ENTRY %main.9 (p.1: f32[10,32,256]) -> f32[10,32,256] {{
  {WHILE}
  {ADD}
}}
"""


def test_ops_without_metadata_take_the_scope_of_the_loop_that_runs_them():
  instructions = hlo_instructions(HLO)
  assert instructions['while.2'] == ('while', LOOP_OP)
  assert instructions['ynn_fusion.3'] == ('fusion', LOOP_OP)
  assert instructions['dot.7'] == ('dot', LOOP_OP)  # two levels down: fusion, then loop
  assert instructions['add.5'] == ('add', 'jit(train_step)/jvp(conv)/add')
  assert classify('ynn_fusion.3', *instructions['ynn_fusion.3']) == (
    'temporal_attention/core',
    'matmul/conv library',
    'backward',
  )
