@extends('layout')

@section('title', 'Run #'.$run->id)

@section('content')
{{-- Was: <div @if($run->isActive()) wire:poll.5s @endif> --}}
<h1>{{ $run->type }} · run #{{ $run->id }}</h1>
<div id="run" data-run-id="{{ $run->id }}" data-status="{{ $run->status }}">
    <span class="status">{{ $run->status }}</span>
    <span class="outcome">{{ $run->outcome }}</span>
    <progress max="{{ $counts['total'] ?? 0 }}" value="{{ $counts['processed'] ?? 0 }}"
              @if(empty($counts['total'])) hidden @endif></progress>
    <span class="counts">@isset($counts['total']){{ $counts['processed'] ?? 0 }} / {{ $counts['total'] }}@endisset</span>
</div>
@endsection

@push('scripts')
<script>
(() => {
    const box = document.getElementById('run');
    const render = (run) => {
        const counts = run.summary_counts || {};
        box.dataset.status = run.status;
        box.querySelector('.status').textContent = run.status;
        box.querySelector('.outcome').textContent = run.outcome;
        const bar = box.querySelector('progress');
        bar.hidden = !counts.total;
        bar.max = counts.total || 0;
        bar.value = counts.processed || 0;
        box.querySelector('.counts').textContent = counts.total ? (counts.processed || 0) + ' / ' + counts.total : '';
    };
    window.runwire.watchRun(@json($run->id), {
        onState: render,
        // Terminal: the stream has ended by itself. (With Livewire: $wire.$refresh() here.)
        onEnd: () => { box.dataset.final = 'true'; },
        onError: (e) => { box.dataset.error = e.status; },
    });
})();
</script>
@endpush
