<div {{ $attributes->merge(['class' => 'runwire-run']) }} data-runwire-run="{{ $id }}" data-status="{{ $status }}" data-terminal="{{ $terminal ? 'true' : 'false' }}">
    <span class="runwire-status" data-runwire-field="status">{{ $status }}</span>
    <span class="runwire-outcome" data-runwire-field="outcome">{{ $outcome }}</span>
    <progress data-runwire-field="progress" max="{{ $total }}" value="{{ $processed }}" @if(! $total) hidden @endif></progress>
    <span class="runwire-counts" data-runwire-field="counts">@if($total){{ $processed }} / {{ $total }}@endif</span>
    {{ $slot }}
</div>
