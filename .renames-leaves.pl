#!/usr/bin/env perl
# Issue 23 stream C (leaf packages): module and name renames of rollout/ and rewards_service/.
# Idempotent. Usage: perl .renames-leaves.pl $(git ls-files '*.py' '*.md' '*.sh' '*.toml' '*.yaml')
# Rewrites `from OLD import a, b` (one line or parenthesized, trailing comment kept on each line), splitting it
# into one import per new module, then dotted references in prose and strings. Run `ruff check --select I --fix`
# on the changed .py files afterwards (a split import may need re-sorting).
use strict;
use warnings;

my $CHAIN = 'rollout.policies.chain_math';
my $COMMON = 'rewards_service.scorers.clip_common';
my $REG = 'rewards_service.registry';

# old module => [default new module (undef: the old one), {name => new module}]
my %MOVES = (
    'rollout.policy' => ['rollout.policies.lcm', {
        Trajectory => 'rollout.trajectory',
        sample_trajectory => 'rollout.policies',
        math_dtype_for => 'rollout.precision',
        map { $_ => $CHAIN } qw(gaussian_log_prob draw_noise decode_images encode_prompts latent_shape clip_or_threshold),
    }],
    'rollout.ddim_policy' => ['rollout.policies.ddim', {
        Trajectory => 'rollout.trajectory',
        math_dtype_for => 'rollout.precision',
        map { $_ => $CHAIN } qw(gaussian_log_prob draw_noise decode_images encode_prompts latent_shape clip_or_threshold),
    }],
    'rewards_service.scorers' => [undef, {
        (map { $_ => 'rewards_service.scorers.base' } qw(Scorer ScoreResult check_batch)),
        CompositeScorer => 'rewards_service.scorers.composite',
        (map { $_ => 'rewards_service.scorers.jpeg' } qw(JpegCompressibility JpegIncompressibility jpeg_size_kb)),
        (map { $_ => $REG } qw(build_scorer REWARD_NAMES REWARDS RewardEntry differentiable_reward_names)),
    }],
    'rewards_service.differentiable' => [undef, {build_differentiable_reward => $REG}],
    'rewards_service.scorers.aesthetic' => [undef, {map { $_ => $COMMON } qw(CLIP_MEAN CLIP_STD clip_preprocess)}],
    'rewards_service.scorers.clip_score' => [undef, {load_pretrained => $COMMON}],
);

sub split_import {
    my ($indent, $old, $names, $comment) = @_;
    my ($default, $table) = @{$MOVES{$old}};
    $names =~ s/#[^\n]*//g;
    my (%by_module, @order);
    for my $item (grep { length } map { s/^\s+|\s+$//gr } split /,/, $names) {
        my ($name) = split /\s+as\s+/, $item;
        my $new = $table->{$name} // $default // $old;
        push @order, $new unless $by_module{$new};
        push @{$by_module{$new}}, $item;
    }
    my @lines;
    for my $module (sort @order) {
        my $line = "${indent}from $module import " . join(', ', @{$by_module{$module}}) . $comment;
        if (length($line) > 120) {
            $line = "${indent}from $module import (\n"
                . join('', map { "$indent    $_,\n" } @{$by_module{$module}}) . "$indent)$comment";
        }
        push @lines, $line;
    }
    return join("\n", @lines);
}

my $OLD = join '|', map { quotemeta } sort { length($b) <=> length($a) } keys %MOVES;

local $/;
for my $file (@ARGV) {
    open my $in, '<', $file or die "$file: $!";
    my $text = <$in>;
    close $in;
    my $before = $text;
    $text =~ s{^([ \t]*)from[ \t]+($OLD)[ \t]+import[ \t]+\(([^)]*)\)([ \t]*#[^\n]*)?}
              {split_import($1, $2, $3, $4 // '')}mge;
    $text =~ s{^([ \t]*)from[ \t]+($OLD)[ \t]+import[ \t]+([^\n(#]*?)([ \t]*#[^\n]*)?$}
              {split_import($1, $2, $3, $4 // '')}mge;
    # dotted references (docstrings, comments, docs, patch targets)
    $text =~ s/\brollout\.policy\.sample_trajectory\b/rollout.policies.sample_trajectory/g;
    $text =~ s/\brollout\.policy\.Trajectory\b/rollout.trajectory.Trajectory/g;
    $text =~ s/\brollout\.(?:policy|ddim_policy)\.(gaussian_log_prob|draw_noise|decode_images|encode_prompts|latent_shape|clip_or_threshold)\b/$CHAIN.$1/g;
    $text =~ s/\brollout\.policy\b(?![\w])/rollout.policies.lcm/g;
    $text =~ s/\brollout\.ddim_policy\b/rollout.policies.ddim/g;
    $text =~ s{\brollout/policy\.py\b}{rollout/policies/lcm.py}g;
    $text =~ s{\brollout/ddim_policy\.py\b}{rollout/policies/ddim.py}g;
    $text =~ s{\brollout/policies\.py\b}{rollout/policies/__init__.py}g;
    $text =~ s/\brewards_service\.scorers\.(build_scorer|REWARD_NAMES|REWARDS|RewardEntry|differentiable_reward_names)\b/$REG.$1/g;
    $text =~ s/\brewards_service\.differentiable\.build_differentiable_reward\b/$REG.build_differentiable_reward/g;
    $text =~ s/\brewards_service\.scorers\.aesthetic\.(CLIP_MEAN|CLIP_STD|clip_preprocess)\b/$COMMON.$1/g;
    $text =~ s/\brewards_service\.scorers\.clip_score\.load_pretrained\b/$COMMON.load_pretrained/g;
    $text =~ s{\brewards_service/scorers/__init__\.py\b}{rewards_service/registry.py}g;
    next if $text eq $before;
    open my $out, '>', $file or die "$file: $!";
    print $out $text;
    close $out;
    print "renamed in $file\n";
}
