{{-- Was: <div @if($run->isActive()) wire:poll.{{ $interval }} @endif> --}}
<div id="live-run" data-status="{{ $row->status }}" data-rendered-at="{{ microtime(true) }}">
    <span class="status">{{ $row->status }}</span>
    <span class="outcome">{{ $row->outcome }}</span>
    <span class="counts">@isset($counts['total']){{ $counts['processed'] ?? 0 }} / {{ $counts['total'] }}@endisset</span>
    <button type="button" id="edit" wire:click="mountAction('edit')">Edit</button>
    @if ($mountedActions)
        <div role="dialog" id="modal">Editing… <button type="button" id="close" wire:click="unmountAction">Close</button></div>
    @endif
</div>
