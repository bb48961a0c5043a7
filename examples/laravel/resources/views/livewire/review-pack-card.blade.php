{{-- Was: <div @if($pack?->isGenerating()) wire:poll.10s @endif> --}}
<div id="live-pack" data-pack-id="{{ $pack->id ?? '' }}" data-status="{{ $pack->status ?? 'none' }}">
    <span class="status">{{ $pack->status ?? 'No review pack yet' }}</span>
    <button type="button" id="generate" wire:click="generate">Generate review pack</button>
</div>
